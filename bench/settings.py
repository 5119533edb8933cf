"""Settings of one benchmarked system, chosen by environment variables the driver sets.

``BENCH_SYSTEM``: live | dtdb | dtdb_default | q2orm | q2redis | liveq2orm | liveq2redis |
celery | huey (``liveq2*``: django-tasks-live runs executed by django-q2's qcluster)
(``dtdb_default``: django-tasks-db with Django's default SQLite settings, no tuning)
``BENCH_DB``: sqlite | postgres, ``BENCH_DB_NAME``: file path or database name
``BENCH_REDIS_DB``: this system's Redis database number
``BENCH_CONCURRENCY``: django-q2's cluster size (read once at import, like Q_CLUSTER)
``BENCH_LIVE_LAYER``: redis | none, the channel layer django-tasks-live pushes events to
"""

import os

from django_tasks_live.sqlite import recommended_options

SYSTEM = os.environ.get("BENCH_SYSTEM", "live")
DEFAULT_SQLITE = SYSTEM == "dtdb_default"  # read by bench.apps: no pragmas either
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "8"))

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "bench"]
INSTALLED_APPS += {
    "live": ["channels", "django_tasks_live"],
    "dtdb": ["django_tasks_db"],
    "dtdb_default": ["django_tasks_db"],
    "q2orm": ["django_q"],
    "q2redis": ["django_q"],
    "liveq2orm": ["channels", "django_q", "django_tasks_live"],
    "liveq2redis": ["channels", "django_q", "django_tasks_live"],
}.get(SYSTEM, [])

if os.environ.get("BENCH_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["BENCH_DB_NAME"],
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "CONN_MAX_AGE": None,
        }
    }
elif DEFAULT_SQLITE:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB_NAME", "/tmp/bench-unused.sqlite3"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB_NAME", "/tmp/bench-unused.sqlite3"),
            # Immediate write lock at BEGIN: without it django-q2 loses results here.
            "OPTIONS": recommended_options(),
            # Persistent connections for every system (django-tasks-db reconnects per job otherwise).
            "CONN_MAX_AGE": None,
        }
    }

if SYSTEM in ("live", "liveq2orm", "liveq2redis"):
    TASKS_LIVE = {"TASK_MODULES": ["bench.handlers.live"]}
    if SYSTEM != "live":
        TASKS_LIVE["EXECUTOR"] = "django_q"
    if os.environ.get("BENCH_LIVE_LAYER", "redis") == "redis":
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [f"redis://127.0.0.1:6379/{REDIS_DB}"]},
            }
        }
elif SYSTEM in ("dtdb", "dtdb_default"):
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
if SYSTEM in ("q2orm", "q2redis", "liveq2orm", "liveq2redis"):
    Q_CLUSTER = {
        "name": "bench",
        "workers": int(os.environ.get("BENCH_CONCURRENCY", "1")),
        "timeout": 60,
        "retry": 120,
        # Bare django-q2: keep every result, the driver counts them. Through this app
        # the run is the result (hand-overs save none).
        "save_limit": 0 if SYSTEM.startswith("q2") else -1,
        "catch_up": False,
        "log_level": "WARNING",
    }
    if SYSTEM.endswith("q2orm"):
        Q_CLUSTER["orm"] = "default"
    else:
        Q_CLUSTER["redis"] = {"host": "127.0.0.1", "port": 6379, "db": REDIS_DB}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
