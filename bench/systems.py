"""One adapter per benchmarked system: how to enqueue, how to start workers, how to count.

Adapters run inside the driver process after ``django.setup()`` with that system's
settings. Completions are counted in each system's own result store, so a run counts
only once the system has recorded it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 500


@dataclass(frozen=True)
class System:
    key: str
    label: str
    uses_db: bool  # False: Redis only, benchmarked once whatever the database
    redis_dbs: int  # Redis database numbers it needs (0: none)
    worker_cmd: Callable[[int], list[list[str]]]  # concurrency -> one command per process
    enqueue_many: Callable[[int, int], None]  # (count, tag)
    enqueue_one: Callable[[int], None]  # tag
    completed: Callable[[], int]
    only_db: str | None = None  # benchmarked on this database only


def _django(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", *args]


def _redis():
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, db=int(os.environ["BENCH_REDIS_DB"]))


# ------------------------------------------------------------------ django-tasks-live


# BENCH_WORKLOAD (bench/limits.py): run i of a phase as (task, kwargs).
LIVE_WORKLOADS: dict[str, Callable[[int, int], tuple[str, dict]]] = {
    "noop": lambda i, tag: ("bench-noop", {"tag": tag}),
    "keys": lambda i, tag: ("bench-keyed", {"tag": tag, "key": f"k{i % 1000}"}),
    "hot": lambda i, tag: ("bench-hot", {"tag": tag, "key": "hot"}),
}


def _live_many(n: int, tag: int) -> None:
    import django_tasks_live as tasks_live

    call = LIVE_WORKLOADS[os.environ.get("BENCH_WORKLOAD", "noop")]
    for i in range(0, n, CHUNK):
        tasks_live.start_many([call(j, tag) for j in range(i, min(n, i + CHUNK))])


def _live_one(tag: int) -> None:
    import django_tasks_live as tasks_live

    tasks_live.start("bench-noop", tag=tag)


def _live_completed() -> int:
    from django_tasks_live.models import Run

    return Run.objects.filter(status="completed").count()


# ------------------------------------------------------------------ django-tasks-db


def _dtdb_many(n: int, tag: int) -> None:
    from django.db import transaction

    from bench.handlers.dtdb import noop

    for i in range(0, n, CHUNK):
        with transaction.atomic():
            for _ in range(min(CHUNK, n - i)):
                noop.enqueue(tag=tag)


def _dtdb_one(tag: int) -> None:
    from bench.handlers.dtdb import noop

    noop.enqueue(tag=tag)


def _dtdb_completed() -> int:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(status="SUCCESSFUL").count()


def _dtdb_workers(concurrency: int) -> list[list[str]]:
    # db_worker runs one job at a time: concurrency N is N processes.
    return [_django("db_worker", "--no-startup-delay", "--verbosity", "0")] * concurrency


# ------------------------------------------------------------------ django-q2


def _q2_many(n: int, tag: int) -> None:
    from django.db import transaction
    from django_q.tasks import async_task

    for i in range(0, n, CHUNK):
        with transaction.atomic():  # ORM broker: one commit per chunk (no effect on Redis)
            for _ in range(min(CHUNK, n - i)):
                async_task("bench.handlers.q2.noop", tag)


def _q2_one(tag: int) -> None:
    from django_q.tasks import async_task

    async_task("bench.handlers.q2.noop", tag)


def _q2_completed() -> int:
    from django_q.models import Success

    return Success.objects.count()


# ------------------------------------------------------------------ Celery


def _celery_many(n: int, tag: int) -> None:
    from bench.handlers.celery_app import noop

    for _ in range(n):
        noop.delay(tag)


def _celery_one(tag: int) -> None:
    from bench.handlers.celery_app import noop

    noop.delay(tag)


def _celery_completed() -> int:
    import redis

    # Results live alone in the next Redis database: one key per finished task.
    db = int(os.environ["BENCH_REDIS_DB"]) + 1
    return redis.Redis(host="127.0.0.1", port=6379, db=db).dbsize()


def _celery_workers(concurrency: int) -> list[list[str]]:
    return [[sys.executable, "-m", "celery", "-A", "bench.handlers.celery_app", "worker",
             "-P", "prefork", "-c", str(concurrency), "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"]]


# ------------------------------------------------------------------ Huey


def _huey_many(n: int, tag: int) -> None:
    from bench.handlers.huey_app import noop

    for _ in range(n):
        noop(tag)


def _huey_one(tag: int) -> None:
    from bench.handlers.huey_app import noop

    noop(tag)


def _huey_completed() -> int:
    return _redis().hlen("huey.results.bench")


def _huey_workers(concurrency: int) -> list[list[str]]:
    consumer = str(Path(sys.executable).parent / "huey_consumer")
    return [[consumer, "bench.handlers.huey_app.huey", "-k", "process", "-w", str(concurrency),
             "-q"]]


SYSTEMS: dict[str, System] = {
    s.key: s
    for s in [
        System("live", "django-tasks-live tasks_worker", True, 1,
               lambda c: [_django("tasks_worker", "--concurrency", str(c))],
               _live_many, _live_one, _live_completed),
        System("dtdb", "django-tasks-db db_worker", True, 0, _dtdb_workers,
               _dtdb_many, _dtdb_one, _dtdb_completed),
        System("dtdb_default", "django-tasks-db db_worker, Django's default SQLite settings",
               True, 0, _dtdb_workers, _dtdb_many, _dtdb_one, _dtdb_completed, "sqlite"),
        System("q2orm", "django-q2 qcluster (ORM broker)", True, 0,
               lambda c: [_django("qcluster")], _q2_many, _q2_one, _q2_completed),
        System("q2redis", "django-q2 qcluster (Redis broker)", True, 1,
               lambda c: [_django("qcluster")], _q2_many, _q2_one, _q2_completed),
        System("liveq2orm", "django-tasks-live on django-q2 qcluster (ORM broker)", True, 1,
               lambda c: [_django("qcluster")], _live_many, _live_one, _live_completed),
        System("liveq2redis", "django-tasks-live on django-q2 qcluster (Redis broker)", True, 1,
               lambda c: [_django("qcluster")], _live_many, _live_one, _live_completed),
        System("celery", "Celery prefork (Redis, results)", False, 2, _celery_workers,
               _celery_many, _celery_one, _celery_completed),
        System("huey", "Huey process (Redis, results)", False, 1, _huey_workers,
               _huey_many, _huey_one, _huey_completed),
    ]
}
