"""The demo pages: one page listing the demo tasks live, and a start endpoint.

``home`` renders ``demo/home.html`` (top-level ``templates/demo/``) with ``demo_tasks``
(a list of ``{"name", "label"}``) and ``task_names``. Registered tasks can also be started
with the app's own endpoint (``{% url "tasks_live:start" name %}``); ``start`` here also
covers the ``django.tasks`` function, which has no registered handler name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

import django_tasks_live as tasks_live

from . import tasks


def _live(name: str) -> Callable[[Any], Any]:
    return lambda user: tasks_live.using(owner=user).start(name)


# What the demo page offers, in display order: task name -> (label, how to start it).
DEMO_TASKS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "demo.import": ("Slow import (steps and progress)", _live("demo.import")),
    "demo.flaky": ("Flaky call (fails twice, then retries)", _live("demo.flaky")),
    "demo.long": ("Long job (try Cancel)", _live("demo.long")),
    "demo.tick": ("Cron tick (also runs every minute)", _live("demo.tick")),
    # django.tasks has no owner: staff see these runs.
    tasks.send_report.module_path: (
        "django.tasks report (send_report.enqueue())",
        lambda user: tasks.send_report.enqueue(recipients=25),
    ),
}


def home(request: HttpRequest) -> HttpResponse:
    demo_tasks = [{"name": name, "label": label} for name, (label, _) in DEMO_TASKS.items()]
    return render(request, "demo/home.html", {"demo_tasks": demo_tasks,
                                              "task_names": list(DEMO_TASKS)})


@login_required
@require_POST
def start(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("task", "")
    if name not in DEMO_TASKS:
        return HttpResponseBadRequest(
            f"Unknown demo task {name!r}; choose one of: {', '.join(DEMO_TASKS)}.",
            content_type="text/plain",
        )
    label, start_it = DEMO_TASKS[name]
    start_it(request.user)
    messages.success(request, f"Started: {label}.")
    return redirect("demo:home")
