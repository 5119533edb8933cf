import os

import pytest

from tests.support.db import POSTGRES_SKIP_REASON, service_reachable


def pytest_collection_modifyitems(config, items):
    """The PostgreSQL suite skips, with the reason, when the server does not answer;
    on SQLite, tests marked ``postgres`` skip saying how they are run."""
    if os.environ.get("TASKS_LIVE_TEST_DB") != "postgres":
        skip = pytest.mark.skip(reason=POSTGRES_SKIP_REASON)
        for item in items:
            if item.get_closest_marker("postgres"):
                item.add_marker(skip)
        return
    host, port = os.environ.get("PGHOST", "127.0.0.1"), int(os.environ.get("PGPORT", "5432"))
    if not service_reachable(host, port):
        skip = pytest.mark.skip(reason=f"PostgreSQL not reachable at {host}:{port}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_snapshot():
    """The dashboard/metrics snapshot is cached per process: no test sees another's."""
    from django_tasks_live import stats

    stats.reset()
    yield
    stats.reset()


@pytest.fixture(autouse=True)
def _calls_dir(tmp_path, monkeypatch):
    """Handlers record their calls here, outside the database under test."""
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("TASKS_LIVE_CALLS_DIR", str(calls))
    return calls


def read_calls(calls_dir, name: str) -> list[str]:
    """Every recorded call of handler ``name`` across all processes."""
    lines: list[str] = []
    for path in sorted(calls_dir.glob(f"{name}-*.log")):
        lines += path.read_text().split()
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that started servers or workers shows the end of their logs."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when != "call" or not report.failed or tmp_path is None:
        return
    for log in sorted(tmp_path.glob("child-*.log")):
        tail = log.read_text(errors="replace")[-6000:]
        report.sections.append((f"{log.name} (last 6,000 characters)", tail))
