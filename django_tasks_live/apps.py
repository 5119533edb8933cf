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
        modules = [importlib.import_module(module) for module in conf.get("TASK_MODULES")]
        _register_django_tasks(modules)
        # EMBEDDED_WORKER: a worker thread in the serving process (daphne, runserver), so
        # the setting alone runs tasks; never in migrate, shell, tests or tasks_worker.
        from .worker import embedded

        embedded.autostart()
        from django.apps import apps

        if apps.is_installed("django_q"):
            # Each qcluster worker process becomes a worker of this app (executors.django_q).
            from django_q.signals import post_spawn

            from .executors.django_q import on_worker_spawn

            post_spawn.connect(on_worker_spawn, dispatch_uid="tasks_live_djq_spawn")


def _register_django_tasks(task_modules: list) -> None:
    """django.tasks Tasks in the apps' tasks.py and TASK_MODULES join the registry."""
    import sys

    from django.apps import apps

    try:
        from .backends import register_django_tasks
    except ImportError:  # Django 5.2 without the django-tasks backport: no such tasks
        return
    found = [sys.modules[f"{app.name}.tasks"] for app in apps.get_app_configs()
             if f"{app.name}.tasks" in sys.modules]
    register_django_tasks([*found, *task_modules])
