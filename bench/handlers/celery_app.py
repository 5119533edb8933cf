"""Celery app: Redis broker on ``BENCH_REDIS_DB``, Redis results on the next DB number."""

import os

from celery import Celery

from bench.mark import mark

_db = int(os.environ.get("BENCH_REDIS_DB", "10"))
app = Celery(
    "bench",
    broker=f"redis://127.0.0.1:6379/{_db}",
    backend=f"redis://127.0.0.1:6379/{_db + 1}",
)
app.conf.update(broker_connection_retry_on_startup=True, worker_redirect_stdouts=False)


@app.task(name="bench.noop")
def noop(tag: int = 0) -> int:
    mark(tag)
    return 1
