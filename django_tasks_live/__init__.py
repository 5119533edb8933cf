"""django-tasks-live: background tasks for Django, shown live in the browser.

``from django_tasks_live import task`` registers handlers; ``import django_tasks_live as
tasks_live`` then ``tasks_live.start("name", ...)``, ``cancel``, ``rerun``, ``wait``, ``pause``/``resume``
a task or queue.
"""

from __future__ import annotations

from typing import Any

from .registry import UnknownTask, registry, task

__all__ = [
    "Canceled",
    "IllegalTransition",
    "Status",
    "TaskContext",
    "TaskTimeout",
    "UnknownTask",
    "acancel",
    "apause",
    "apaused",
    "arerun",
    "aresume",
    "aruns",
    "astart",
    "astart_or_get",
    "await_run",
    "cancel",
    "chain",
    "current_context",
    "group",
    "pause",
    "paused",
    "progress",
    "registry",
    "rerun",
    "resume",
    "runs",
    "start",
    "start_many",
    "start_or_get",
    "task",
    "using",
    "wait",
]

_LAZY = {
    "start": "api", "start_many": "api", "cancel": "api", "rerun": "api", "wait": "api",
    "runs": "api", "aruns": "api",
    "start_or_get": "api", "astart_or_get": "api", "chain": "api", "group": "api",
    "astart": "api", "acancel": "api", "arerun": "api", "await_run": "api", "using": "api",
    "pause": "api", "resume": "api", "paused": "api", "apause": "api", "aresume": "api",
    "apaused": "api",
    "TaskContext": "context", "Canceled": "context", "TaskTimeout": "context",
    "current_context": "context", "progress": "context",
    "Status": "states", "IllegalTransition": "states",
}


def __getattr__(name: str) -> Any:
    # Lazy so that importing the package (e.g. for @task) never needs the app registry.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
