"""Huey instance: Redis storage (queue and results) on ``BENCH_REDIS_DB``."""

import os

from huey import RedisHuey

from bench.mark import mark

huey = RedisHuey("bench", host="127.0.0.1", port=6379, db=int(os.environ.get("BENCH_REDIS_DB", "12")))


@huey.task()
def noop(tag: int = 0) -> int:
    mark(tag)
    return 1
