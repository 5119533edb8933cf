"""Settings of django-tasks-live, read from ``settings.TASKS_LIVE`` with defaults.

Read at call time (not import time) so ``override_settings`` works in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Progress: persisted at most every N seconds per run; the last value is always persisted.
    "PROGRESS_PERSIST_INTERVAL": 0.25,
    # Progress: pushed to the channel layer at most every N seconds per run.
    "PROGRESS_PUSH_INTERVAL": 0.1,
    # How often ctx.is_canceled() re-reads the run's status from the database.
    "CANCEL_CHECK_INTERVAL": 0.5,
    # Seconds a cooperative handler gets after a cancel request or a timeout before it is killed.
    "KILL_GRACE": 5.0,
    # Default per-run timeout in seconds (None: no timeout).
    "DEFAULT_TIMEOUT": None,
    # Worker heartbeat period and the age after which a silent worker counts as lost.
    "HEARTBEAT_INTERVAL": 5.0,
    "HEARTBEAT_TIMEOUT": 30.0,
    # How often a worker looks for due runs while executors are idle (one read for the
    # worker; on PostgreSQL LISTEN/NOTIFY wakes it at once, PG_POLL_INTERVAL is a fallback).
    "POLL_INTERVAL": 0.05,
    "PG_POLL_INTERVAL": 1.0,
    # Runs claimed per round trip at most.
    "CLAIM_BATCH": 200,
    # At most this many runs an executor claims ahead, used only for short runs (it
    # claims about 20 ms of work at a time); they show as running while they wait, and
    # a drained worker puts them back. Fewer commits per run.
    "PREFETCH": 128,
    # Backoff base and cap in seconds for retries.
    "RETRY_BACKOFF_BASE": 1.0,
    "RETRY_BACKOFF_MAX": 3600.0,
    # Missed cron fire times after downtime: "latest" (one catch-up run) or "skip".
    "SCHEDULE_MISSED": "latest",
    # With "skip": a fire time first seen more than this many seconds late is skipped.
    "SCHEDULE_MISFIRE_GRACE": 60.0,
    # Retention: keep the newest N terminal runs per task and/or runs newer than D days.
    "RETENTION_KEEP_LAST": None,
    "RETENTION_DAYS": None,
    # The SSE stream.
    "SSE_SNAPSHOT_LIMIT": 100,
    "SSE_HEARTBEAT_INTERVAL": 15.0,
    "SSE_RETRY_MS": 2000,
    "SSE_QUEUE_SIZE": 1000,
    "SSE_MAX_FILTER_VALUES": 50,
    "SSE_AUTHORIZE": "django_tasks_live.authz.default_authorize",
    # Each daphne process re-reads new events at least this often (the channel layer
    # only speeds this up), so events written by any process reach every stream.
    "SSE_POLL_INTERVAL": 0.5,
    # PostgreSQL: how long a hole in event ids may stay open (a transaction that took
    # an id and has not committed yet) before the stream treats it as rolled back.
    "SSE_GAP_SETTLE": 1.0,
    # Each daphne process reads new events (and writes them to its clients) at most once
    # per window while events keep coming: 50 µs per open stream, at most this many
    # seconds. Fewer, larger writes per client when many clients watch.
    "SSE_BATCH_WINDOW": 0.05,
    # Browser client reconnect policy (rendered into the page by the template tags).
    "CLIENT_RECONNECT_INITIAL_MS": 500,
    "CLIENT_RECONNECT_MAX_MS": 15000,
    "CLIENT_RECONNECT_MAX_RETRIES": None,
    # Where the ASGI app serves the event stream (it is not a urls.py route).
    "SSE_URL": "/tasks/events/",
    # Permission ("app_label.codename") that lets a non-staff user start tasks from the
    # start endpoint; None: staff only.
    "START_PERMISSION": None,
    # Runs listed at most by {% task_list %} and the per-status pages.
    "LIST_LIMIT": 50,
    # Start an in-process worker thread from the web process (development only).
    "EMBEDDED_WORKER": False,
    # Modules imported at start-up so their @task handlers register ("<app>.tasks" is automatic).
    "TASK_MODULES": [],
}


def get(name: str) -> Any:
    """Return the setting ``name`` from ``TASKS_LIVE``, else its default."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown django-tasks-live setting {name!r}")
    return getattr(settings, "TASKS_LIVE", {}).get(name, DEFAULTS[name])
