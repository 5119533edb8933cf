"""The demo site as a many-process deployment: PostgreSQL, the Redis channel layer, N
workers (built-in ``tasks_worker`` and/or django-q2 ``qcluster``) and M daphne processes.

    export DJANGO_SETTINGS_MODULE=example_project.settings_scaleout
    python manage.py migrate
    daphne -b 127.0.0.1 -p 8001 example_project.asgi:application   # M of these
    python manage.py tasks_worker --concurrency 4                  # N of these, and/or
    python manage.py qcluster                                       # django-q2 clusters

Environment: ``DEMO_PG_NAME`` / ``PGHOST`` / ``PGPORT`` / ``PGUSER`` (the database),
``DEMO_REDIS_URL`` (channel layer and django-q2 broker), ``DEMO_EXECUTOR`` (``builtin`` or
``django_q``: the engine of new runs), ``DEMO_Q_WORKERS`` (processes per qcluster).
"""

import os

from .settings import *  # noqa: F403
from .settings import INSTALLED_APPS, TASKS_LIVE

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [*INSTALLED_APPS, "django_q"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DEMO_PG_NAME", "tasks_live_demo"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "CONN_MAX_AGE": 60,
    }
}
# Every daphne hears every worker's events at once (each also re-reads the database).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "max_connections": 1000}]},
    }
}
SILENCED_SYSTEM_CHECKS: list[str] = []
TASKS_LIVE = {
    **TASKS_LIVE,
    "EMBEDDED_WORKER": False,  # workers are processes of their own here
    "EXECUTOR": os.environ.get("DEMO_EXECUTOR", "builtin"),
}
Q_CLUSTER = {
    "name": "tasks_live_demo",
    "workers": int(os.environ.get("DEMO_Q_WORKERS", "2")),
    "redis": REDIS_URL,
    "retry": 120,
    "timeout": 90,  # django-q2's own tasks; hand-overs of runs switch it off
    "save_limit": -1,  # the run is the result
    "max_attempts": 1,
    "catch_up": False,
}
