import os

from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "bench"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every system gets the same SQLite tuning as django-tasks-live (WAL, NORMAL sync):
        # the comparison is between workers, not between journal modes.
        from django.conf import settings
        from django.db.backends.signals import connection_created

        from django_tasks_live.sqlite import configure_connection

        if not getattr(settings, "DEFAULT_SQLITE", False):
            connection_created.connect(configure_connection, dispatch_uid="tasks_live_sqlite")
        if os.environ.get("BENCH_QUERY_LOG"):
            from .querylog import install

            connection_created.connect(install, dispatch_uid="bench_querylog")
