"""A throwaway database for the scale benchmarks (``admin.py``, ``explain.py``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def open_scratch_database(db: str, name: str) -> None:
    """Point the test settings at a new database ``name`` (PostgreSQL, recreated) or a new
    SQLite file, set Django up and migrate it."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if db == "postgres":
        os.environ.update(TASKS_LIVE_TEST_DB="postgres", TASKS_LIVE_DB_NAME=name)
        for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    else:
        os.environ["TASKS_LIVE_DB_NAME"] = str(Path(tempfile.mkdtemp()) / f"{name}.sqlite3")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
