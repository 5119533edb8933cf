"""Which database the suite runs on, and skips for tests that need a real service."""

from __future__ import annotations

import socket

import pytest
from django.db import connection


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# A marker, not a skipif: conftest.py skips these off PostgreSQL with this reason, and
# ./dev test runs them (`-m postgres`) in a second pass when PostgreSQL answers.
requires_postgres = pytest.mark.postgres
POSTGRES_SKIP_REASON = ("needs PostgreSQL: `./dev test` runs these in its PostgreSQL pass when "
                        "127.0.0.1:5432 answers (or run with TASKS_LIVE_TEST_DB=postgres)")
requires_redis = pytest.mark.skipif(
    not service_reachable("127.0.0.1", 6379), reason="needs Redis at 127.0.0.1:6379 (not reachable)"
)
