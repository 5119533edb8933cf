"""The demo page: the demo tasks, live, each with the app's own Start button.

``home`` renders ``demo/home.html`` (top-level ``templates/demo/``) with ``demo_tasks``
(a list of ``{"name", "label"}``). Start goes to the app's endpoint (``tasks/start/``),
the ``django.tasks`` function included: it is registered by its dotted path.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from . import tasks

# What the demo page offers, in display order: task name -> label.
DEMO_TASKS: dict[str, str] = {
    "demo.import": "Slow import (steps and progress)",
    "demo.flaky": "Flaky call (fails twice, then retries)",
    "demo.long": "Long job (try Cancel)",
    "demo.tick": "Cron tick (also runs every minute)",
    tasks.send_report.module_path: "django.tasks report (@django.tasks.task)",
}


def home(request: HttpRequest) -> HttpResponse:
    demo_tasks = [{"name": name, "label": label} for name, label in DEMO_TASKS.items()]
    return render(request, "demo/home.html", {"demo_tasks": demo_tasks})
