"""The demo app: a few tasks to watch, and the embedded worker for ``./dev demo``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from django.apps import AppConfig

logger = logging.getLogger(__name__)


def serving_web() -> bool:
    """True in the process that serves requests (daphne, or runserver's reloaded child).

    Management commands such as ``migrate`` or ``demo_user`` import the apps too; a
    worker thread there would claim runs and die with the command.
    """
    program = Path(sys.argv[0])
    if program.name.startswith("daphne") or program.parent.name == "daphne":  # python -m daphne
        return True
    if "runserver" in sys.argv[1:2]:
        # The autoreloader's parent process only watches files; its child serves.
        return os.environ.get("RUN_MAIN") == "true" or "--noreload" in sys.argv
    return False


class DemoConfig(AppConfig):
    name = "example_project.demo"
    label = "demo"
    verbose_name = "Demo"

    def ready(self) -> None:
        from django_tasks_live import conf

        if conf.get("EMBEDDED_WORKER") and serving_web():
            start_embedded_worker()


def start_embedded_worker() -> None:
    try:
        from django_tasks_live.worker import embedded
    except ImportError:  # the package may not ship it yet
        logger.warning("No embedded worker available: run `manage.py tasks_worker` beside the site.")
        return
    # Four threads: the long demo job must not keep the others waiting.
    embedded.start(concurrency=4)
