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

TASKS = {"default": {"BACKEND": "django_tasks_live.backends.LiveTasksBackend",
                     "QUEUES": ["default", "other"]}}
TASKS_LIVE = {
    "HEARTBEAT_INTERVAL": float(os.environ.get("TASKS_LIVE_HEARTBEAT", "0.5")),
    "HEARTBEAT_TIMEOUT": float(os.environ.get("TASKS_LIVE_HEARTBEAT_TIMEOUT", "10")),
    "KILL_GRACE": 1.0,
    "RETRY_BACKOFF_BASE": 0.05,
    "SSE_HEARTBEAT_INTERVAL": float(os.environ.get("TASKS_LIVE_SSE_HEARTBEAT", "15")),
    "SSE_POLL_INTERVAL": float(os.environ.get("TASKS_LIVE_SSE_POLL", "0.5")),
    # Browser tests restart daphne: a short reconnect backoff keeps them quick.
    "CLIENT_RECONNECT_INITIAL_MS": 200,
    "CLIENT_RECONNECT_MAX_MS": 1000,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_tasks_live": {"handlers": ["console"], "level": "WARNING"}},
}
