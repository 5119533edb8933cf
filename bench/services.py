"""Throwaway PostgreSQL databases and flushed Redis databases for one benchmarked system."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres",
      "connect_timeout": 3}


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(**PG).close()
        return True
    except Exception:
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=3).ping())
    except Exception:
        return False


@contextmanager
def temp_postgres_db(key: str, db: str) -> Iterator[str | None]:
    """A fresh database for ``key`` when ``db`` is postgres (dropped afterwards), else None."""
    if db != "postgres":
        yield None
        return
    import psycopg

    name = f"bench_{key}_{os.getpid()}"
    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(**PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def flushed_redis(numbers: Iterable[int]) -> Iterator[None]:
    """Empty the given Redis databases before and after the block."""
    numbers = list(numbers)

    def flush() -> None:
        if numbers:
            import redis

            for n in numbers:
                redis.Redis(host="127.0.0.1", port=6379, db=n).flushdb()

    flush()
    try:
        yield
    finally:
        flush()
