"""Test settings: SQLite by default; ``TASKS_LIVE_TEST_DB=postgres`` selects PostgreSQL.

Subprocesses started by acceptance tests (workers, daphne) use these settings too, with
``TASKS_LIVE_DB_NAME`` naming the test database the test process created.
"""

import os
import tempfile
from pathlib import Path

import django

from django_tasks_live.sqlite import recommended_options

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_q",
    "django_tasks_live",
    "tests.testapp",
]
if django.VERSION < (6, 0):  # Django 5.2 LTS: the django-tasks backport provides the API
    INSTALLED_APPS.insert(-2, "django_tasks")
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"
# DEBUG is off and nothing is collected: tests/urls.py serves the app's static files itself.
SILENCED_SYSTEM_CHECKS = ["tasks_live.W023"]

_db_kind = os.environ.get("TASKS_LIVE_TEST_DB", "sqlite")
if _db_kind == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("TASKS_LIVE_DB_NAME", "test"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "TEST": {"NAME": f"test_tasks_live_{os.getpid()}"},
        }
    }
else:
    _path = os.environ.get("TASKS_LIVE_DB_NAME") or str(
        Path(tempfile.gettempdir()) / f"tasks_live_test_{os.getpid()}.sqlite3"
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _path,
            "OPTIONS": recommended_options(),
            "TEST": {"NAME": _path},
        }
    }

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# "redis-drop" loses every other message on purpose (tests/support/layers.py).
if os.environ.get("TASKS_LIVE_CHANNEL_LAYER") in ("redis", "redis-drop"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "tests.support.layers.DroppingRedisChannelLayer"
            if os.environ["TASKS_LIVE_CHANNEL_LAYER"] == "redis-drop"
            else "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("TASKS_LIVE_REDIS_URL", "redis://127.0.0.1:6379/0")],
                # A prefix per test run keeps concurrent runs from hearing each other.
                "prefix": os.environ.get("TASKS_LIVE_REDIS_PREFIX", "asgi"),
            },
        }
    }

# django-q2 (the "django_q" executor). Read once at import by django-q2: acceptance tests
# start each qcluster with its broker, cluster name (a Redis list or OrmQ key of its own
# per test) and redelivery time in the environment.
Q_CLUSTER = {
    # The signing salt: the same for every cluster of the site.
    "name": "tasks_live_tests",
    # The queue (OrmQ key, Redis list) of this cluster.
    "cluster_name": os.environ.get("TASKS_LIVE_Q_NAME", "tasks_live_tests"),
    "workers": int(os.environ.get("TASKS_LIVE_Q_WORKERS", "2")),
    "retry": int(os.environ.get("TASKS_LIVE_Q_RETRY", "60")),
    # Only for django-q2's own tasks (hand-overs switch it off); below retry, as it asks.
    "timeout": max(int(os.environ.get("TASKS_LIVE_Q_RETRY", "60")) - 1, 1),
    "save_limit": -1,
    "max_attempts": 1,
    "poll": 0.05,
    "catch_up": False,
    "log_level": "WARNING",
}
if os.environ.get("TASKS_LIVE_Q_BROKER", "orm") == "redis":
    Q_CLUSTER["redis"] = {"host": "127.0.0.1", "port": 6379,
                          "db": int(os.environ.get("TASKS_LIVE_Q_REDIS_DB", "5"))}
else:
    Q_CLUSTER["orm"] = "default"

TASKS = {"default": {"BACKEND": "django_tasks_live.backends.LiveTasksBackend",
                     "QUEUES": ["default", "other"]}}
TASKS_LIVE = {
    "HEARTBEAT_INTERVAL": float(os.environ.get("TASKS_LIVE_HEARTBEAT", "0.5")),
    "HEARTBEAT_TIMEOUT": float(os.environ.get("TASKS_LIVE_HEARTBEAT_TIMEOUT", "10")),
    "KILL_GRACE": 1.0,
    # Acceptance tests widen it to keep runs claimed ahead for as long as they look.
    "SHORT_RUN_WINDOW": float(os.environ.get("TASKS_LIVE_SHORT_RUN_WINDOW", "0.1")),
    "DRAIN_TIMEOUT": float(os.environ.get("TASKS_LIVE_DRAIN_TIMEOUT", "30")),
    "EXECUTOR": os.environ.get("TASKS_LIVE_EXECUTOR", "builtin"),
    "DJANGO_Q_CLUSTER": os.environ.get("TASKS_LIVE_Q_NAME"),
    "RETRY_BACKOFF_BASE": 0.05,
    # Acceptance tests turn automatic retention on in real workers, at a test's pace.
    "RETENTION_KEEP_LAST": int(os.environ["TASKS_LIVE_RETENTION_KEEP_LAST"])
    if "TASKS_LIVE_RETENTION_KEEP_LAST" in os.environ else None,
    "RETENTION_INTERVAL": float(os.environ.get("TASKS_LIVE_RETENTION_INTERVAL", "300")),
    "RETENTION_BATCH_SIZE": int(os.environ.get("TASKS_LIVE_RETENTION_BATCH_SIZE", "500")),
    "RETENTION_MAX_BATCHES": int(os.environ.get("TASKS_LIVE_RETENTION_MAX_BATCHES", "20")),
    "SSE_HEARTBEAT_INTERVAL": float(os.environ.get("TASKS_LIVE_SSE_HEARTBEAT", "15")),
    "SSE_POLL_INTERVAL": float(os.environ.get("TASKS_LIVE_SSE_POLL", "0.5")),
    "SSE_STALL_TIMEOUT": float(os.environ.get("TASKS_LIVE_SSE_STALL_TIMEOUT", "60")),
    "SSE_MAX_BUFFER_BYTES": int(os.environ.get("TASKS_LIVE_SSE_MAX_BUFFER", "1048576")),
    # Browser tests restart daphne: a short reconnect backoff keeps them quick.
    "CLIENT_RECONNECT_INITIAL_MS": 200,
    "CLIENT_RECONNECT_MAX_MS": 1000,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_tasks_live": {"handlers": ["console"],
                                      "level": os.environ.get("TASKS_LIVE_LOG_LEVEL", "WARNING")}},
}

# Fast hashing: tests create users, and PBKDF2 costs seconds on a loaded machine.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
