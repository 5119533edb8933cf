"""The demo app: a few tasks to watch (its embedded worker is the library's
``TASKS_LIVE = {"EMBEDDED_WORKER": True}``, started in the serving process)."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "example_project.demo"
    label = "demo"
    verbose_name = "Demo"
