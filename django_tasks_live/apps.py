from __future__ import annotations

from django.apps import AppConfig


class TasksLiveConfig(AppConfig):
    name = "django_tasks_live"
    verbose_name = "Tasks (live)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import importlib

        from django.db.backends.signals import connection_created
        from django.utils.module_loading import autodiscover_modules

        from . import checks, conf, sqlite

        connection_created.connect(sqlite.configure_connection, dispatch_uid="tasks_live_sqlite")
        checks.register()
        # Handlers register on import: every installed app's tasks.py, plus TASK_MODULES.
        autodiscover_modules("tasks")
        for module in conf.get("TASK_MODULES"):
            importlib.import_module(module)
