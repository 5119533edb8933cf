"""django-q2 clusters in acceptance tests: a cluster name (its OrmQ key or Redis list) of
its own per test, this process pointed at the same broker, the qcluster command."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable

from tests.support.processes import Child, wait_until

REDIS_DB = 5  # the Redis database django-q2's broker uses in the tests (tests/settings.py)


def use_django_q(settings, monkeypatch, broker: str, **tasks_live) -> dict[str, str]:
    """Hand this test's runs to a cluster of its own on ``broker`` ("orm" or "redis");
    returns the environment its qcluster processes need."""
    name = f"tl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "DJANGO_Q_CLUSTER": name, **tasks_live}
    if broker == "redis":
        from django_q.conf import Conf  # read at import: point this process at Redis too

        monkeypatch.setattr(Conf, "ORM", None)
        monkeypatch.setattr(Conf, "REDIS", {"host": "127.0.0.1", "port": 6379, "db": REDIS_DB})
    return {"TASKS_LIVE_EXECUTOR": settings.TASKS_LIVE.get("EXECUTOR", "builtin"),
            "TASKS_LIVE_Q_NAME": name, "TASKS_LIVE_Q_BROKER": broker}


def drop_queue(env: dict[str, str]) -> None:
    """Delete the test's Redis list (OrmQ rows go with the test database)."""
    if env.get("TASKS_LIVE_Q_BROKER") == "redis":
        from django_q.brokers import get_broker

        get_broker(env["TASKS_LIVE_Q_NAME"]).delete_queue()


def descendants(pid: int) -> list[int]:
    """Pids of the processes under ``pid`` (qcluster's sentinel and workers)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            kids = []
        found += kids
        frontier += kids
    return found


def start_qcluster(spawn: Callable[..., Child], workers: int = 2, **env: str) -> Child:
    """A ``manage.py qcluster``, returned once each worker process registered as a worker
    of this app."""
    from django_tasks_live.models import Worker

    child = spawn([sys.executable, "-m", "django", "qcluster"],
                  TASKS_LIVE_Q_WORKERS=str(workers), **env)
    wait_until(lambda: child.proc.poll() is not None or Worker.objects.filter(
        pid__in=descendants(child.pid), stopped_at=None).count() >= workers, 60,
        "qcluster workers")
    assert child.proc.poll() is None, child.output()
    return child
