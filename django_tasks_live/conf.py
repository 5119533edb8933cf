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
    # How old a worker's copy of the paused tasks and queues may get (seconds): workers
    # re-read it this often (on PostgreSQL a pause or resume also reaches them at once).
    "PAUSE_REFRESH_INTERVAL": 1.0,
    # Runs claimed per round trip at most.
    "CLAIM_BATCH": 200,
    # At most this many runs an executor claims ahead, used only for short runs (it
    # claims about 20 ms of work at a time); they show as claimed while they wait, and
    # a drained worker puts them back. Fewer commits per run.
    "PREFETCH": 128,
    # A run that outlives this many seconds is recorded as running (its handler began),
    # the outcomes its executor holds are written, and the runs claimed behind it are
    # given back to other executors. Shorter runs pay no write for it.
    "SHORT_RUN_WINDOW": 0.1,
    # A run whose worker is lost before its handler began goes back to pending without
    # using up an attempt, at most this many times; after that (a run that may take
    # its whole worker down at once) the loss counts as an attempt.
    "LOST_CLAIMS_LIMIT": 3,
    # After SIGTERM, how long runs still executing may take to finish (None: as long as
    # they need); then they are stopped and put back to pending, attempts not used up.
    "DRAIN_TIMEOUT": 30.0,
    # How often a busy worker reads cancel requests of its runs (kills are on time:
    # the request plus KILL_GRACE, at most this much later).
    "CANCEL_POLL_INTERVAL": 0.25,
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
    # Workers apply that retention themselves: one worker at a time (a lease), at most
    # every RETENTION_INTERVAL seconds, in batches of RETENTION_BATCH_SIZE runs (at most
    # RETENTION_MAX_BATCHES per round, a short pause between them).
    "RETENTION_INTERVAL": 300.0,
    "RETENTION_BATCH_SIZE": 500,
    "RETENTION_MAX_BATCHES": 20,
    # Rows of workers stopped or lost more than N days ago are deleted (None: kept).
    "WORKER_RETENTION_DAYS": 7.0,
    # The SSE stream.
    "SSE_SNAPSHOT_LIMIT": 100,
    "SSE_HEARTBEAT_INTERVAL": 15.0,
    "SSE_RETRY_MS": 2000,
    "SSE_QUEUE_SIZE": 1000,
    # A stream whose client reads slowly: at most SSE_MAX_BUFFER_BYTES stay unsent on it
    # (larger writes go in pieces), the rest is re-read from the database later; one
    # whose client reads nothing for SSE_STALL_TIMEOUT seconds is closed (the client
    # resumes with Last-Event-ID).
    "SSE_STALL_TIMEOUT": 60.0,
    "SSE_MAX_BUFFER_BYTES": 1_048_576,
    "SSE_MAX_FILTER_VALUES": 50,
    "SSE_AUTHORIZE": "django_tasks_live.authz.default_authorize",
    # Each daphne process re-reads new events at least this often (the channel layer
    # only speeds this up), so events written by any process reach every stream.
    "SSE_POLL_INTERVAL": 0.5,
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
    # A permission ("app_label.codename") that lets a user start tasks and rerun runs
    # from the endpoints and pages, beside "django_tasks_live.start_run"; None:
    # "django_tasks_live.add_run" (what granted starting before start_run existed).
    "START_PERMISSION": None,
    # Runs listed at most by {% task_list %} and the per-status pages.
    "LIST_LIMIT": 50,
    # The engine that executes runs: "builtin" (manage.py tasks_worker) or "django_q"
    # (manage.py qcluster); per queue in QUEUE_EXECUTORS ({"reports": "django_q"}), per
    # task with @task(executor=...).
    "EXECUTOR": "builtin",
    "QUEUE_EXECUTORS": {},
    # django-q2: a run handed over this many seconds ago that has not begun is handed
    # over again (a hand-over its broker lost: Redis pops tasks, a killed cluster drops
    # them); the claim makes a duplicate hand-over harmless.
    "HANDOVER_RETRY": 60.0,
    # django-q2: the cluster name runs are handed to (None: Q_CLUSTER's own).
    "DJANGO_Q_CLUSTER": None,
    # Start an in-process worker (threads) in the process that serves the site: daphne,
    # uvicorn, runserver's child; not migrate, shell, tests or tasks_worker (development only).
    "EMBEDDED_WORKER": False,
    # A bearer token that may read the Prometheus metrics endpoint (metrics.metrics_view)
    # besides staff sessions: "Authorization: Bearer <token>". None: staff only.
    "METRICS_TOKEN": None,
    # Constraint groups declared in settings: task name -> list of limits, e.g.
    # {"resolve": [{"concurrency": 3, "group": "dns"}], "call-api": [{"rate": 10, "per": 60,
    # "key": "{tenant}"}]} (see django_tasks_live.limits), applied beside @task(limits=...).
    "LIMITS": {},
    # Workers look for limited runs that could start but were not admitted (a run that
    # became due, a slot freed by a deleted run) this often: a safety net, not the way
    # runs are admitted (the transaction that frees a slot admits the next run).
    "LIMITS_SWEEP_INTERVAL": 1.0,
    # Modules imported at start-up so their @task handlers register ("<app>.tasks" is automatic).
    "TASK_MODULES": [],
}


def get(name: str) -> Any:
    """Return the setting ``name`` from ``TASKS_LIVE``, else its default."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown django-tasks-live setting {name!r}")
    return getattr(settings, "TASKS_LIVE", {}).get(name, DEFAULTS[name])
