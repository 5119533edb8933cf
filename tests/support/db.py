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


requires_postgres = pytest.mark.skipif(
    "not __import__('tests.support.db', fromlist=['on_postgres']).on_postgres()",
    reason="needs PostgreSQL: run with TASKS_LIVE_TEST_DB=postgres (server at 127.0.0.1:5432)",
)
requires_redis = pytest.mark.skipif(
    not service_reachable("127.0.0.1", 6379), reason="needs Redis at 127.0.0.1:6379 (not reachable)"
)
