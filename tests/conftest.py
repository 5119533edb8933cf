import pytest


@pytest.fixture(autouse=True)
def _calls_dir(tmp_path, monkeypatch):
    """Handlers record their calls here, outside the database under test."""
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("TASKS_LIVE_CALLS_DIR", str(calls))
    return calls
