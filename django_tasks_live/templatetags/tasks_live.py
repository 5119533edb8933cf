"""Template tags that render runs with the attributes ``tasks_live.js`` keeps live.

``{% load tasks_live %}`` then:

- ``{% tasks_live_script %}``: the client script and its configuration (once per page);
- ``{% task_item "import-data" %}``: the latest run of a task (or ``{% task_item run %}``)
  through the first existing template of
  ``django_tasks_live/task_item/<task>/<status>.html``, ``.../<task>/default.html``,
  ``.../task_item/<status>.html``, ``.../task_item/default.html``;
- ``{% task_list status="running" %}``: the newest runs of a status, live.

A page goes live inside an element with ``data-tasks-live-stream`` (empty: the
``SSE_URL`` setting). Users see the runs the default stream rule lets them see:
staff all runs, others their own.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django import template
from django.middleware.csrf import get_token
from django.template import TemplateSyntaxError
from django.template.loader import render_to_string, select_template
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, json_script
from django.utils.safestring import SafeString

from .. import authz, conf, store
from ..models import Run
from ..states import TERMINAL, Status

register = template.Library()

IDLE = "idle"  # the status shown for a task that never ran
# Task names that may be used in a template path (no "..", no slashes).
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
RUN_ID_PLACEHOLDER = 2**31 - 7  # reversed into URLs, then swapped for "{id}"
TASK_PLACEHOLDER = "__task__"
LABELS = {**dict(Status.choices), IDLE: "Never run"}


def client_config(request: Any = None) -> dict[str, Any]:
    """What ``tasks_live.js`` reads from ``#tasks-live-config``."""
    config: dict[str, Any] = {
        "streamUrl": conf.get("SSE_URL"),
        "initialDelay": conf.get("CLIENT_RECONNECT_INITIAL_MS"),
        "maxDelay": conf.get("CLIENT_RECONNECT_MAX_MS"),
        "maxRetries": conf.get("CLIENT_RECONNECT_MAX_RETRIES"),
        "labels": LABELS,
    }
    try:
        config["urls"] = {
            "start": reverse("tasks_live:start", args=[TASK_PLACEHOLDER]).replace(
                TASK_PLACEHOLDER, "{task}"),
            **{
                verb: reverse(f"tasks_live:{verb}", args=[RUN_ID_PLACEHOLDER]).replace(
                    str(RUN_ID_PLACEHOLDER), "{id}")
                for verb in ("cancel", "rerun", "run")
            },
        }
    except NoReverseMatch:  # the app's urls are not included: buttons need their own URLs
        config["urls"] = {}
    if request is not None:
        config["csrfToken"] = get_token(request)
    return config


@register.simple_tag(takes_context=True)
def tasks_live_script(context: template.Context, css: bool = True) -> SafeString:
    """The client script, its configuration (reconnect policy, URLs, CSRF) and default styles."""
    config = client_config(context.get("request"))
    html = format_html(
        '{}\n<script src="{}" defer></script>',
        json_script(config, "tasks-live-config"),
        static("django_tasks_live/tasks_live.js"),
    )
    if css:
        html += format_html('\n<link rel="stylesheet" href="{}">', static("django_tasks_live/tasks_live.css"))
    return html


def _percent(run: Run | None) -> float | None:
    if run is None:
        return None
    if run.status == Status.COMPLETED:
        return 100.0
    return run.percent


def _templates(task_name: str, status: str) -> list[str]:
    base = "django_tasks_live/task_item"
    names = []
    if SAFE_NAME.match(task_name):
        names += [f"{base}/{task_name}/{status}.html", f"{base}/{task_name}/default.html"]
    return [*names, f"{base}/{status}.html", f"{base}/default.html"]


def _visible_runs(context: template.Context, **filters: Any):
    """Runs the page's user may see (everything when rendered without a request)."""
    request = context.get("request")
    if request is None:
        return store.runs(**filters)
    try:
        return store.runs(owner_id=authz.visible_owner(request.user), **filters)
    except PermissionError:
        return store.runs().none()


def item_context(run: Run | None, task_name: str, *, follow_task: bool) -> dict[str, Any]:
    """What the item templates get; numbers are preformatted so no locale alters the CSS."""
    status = run.status if run is not None else IDLE
    state = run.to_state() if run is not None else None
    percent = _percent(run)
    return {
        "run": run,
        "state": state,
        "task_name": task_name,
        "status": status,
        "status_label": LABELS.get(status, status),
        "percent": percent,
        "bar_width": f"{max(0.0, min(percent or 0.0, 100.0)):.1f}%",
        "percent_text": "" if percent is None else f"{round(percent)}%",
        # Compact, as the client's JSON.stringify writes it.
        "result_text": json.dumps(state["result"], separators=(",", ":"))
        if state and "result" in state else "",
        "terminal": status in TERMINAL,
        "follow_task": follow_task,
    }


def render_item(run: Run | None, task_name: str, *, follow_task: bool,
                template_name: str | None = None) -> SafeString:
    ctx = item_context(run, task_name, follow_task=follow_task)
    names = [template_name] if template_name else _templates(task_name, ctx["status"])
    return SafeString(select_template(names).render(ctx))


@register.simple_tag(takes_context=True)
def task_item(context: template.Context, task: str | Run, template: str | None = None) -> SafeString:
    """A task's latest run (``{% task_item "name" %}``) or one run (``{% task_item run %}``)."""
    if isinstance(task, Run):
        return render_item(task, task.task_name, follow_task=False, template_name=template)
    if not isinstance(task, str) or not task:
        raise TemplateSyntaxError(f"task_item takes a task name or a Run, got {task!r}.")
    run = _visible_runs(context, task=[task]).first()
    return render_item(run, task, follow_task=True, template_name=template)


def _names(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@register.simple_tag(takes_context=True)
def task_list(context: template.Context, status: str = "", task: str = "",
              limit: int | None = None) -> SafeString:
    """The newest runs (of ``status`` and ``task``, comma-separated); new ones appear live."""
    statuses, tasks = _names(status), _names(task)
    unknown = [s for s in statuses if s not in Status.values]
    if unknown:
        raise TemplateSyntaxError(f"task_list: unknown status {', '.join(unknown)}.")
    limit = limit or conf.get("LIST_LIMIT")
    runs = list(_visible_runs(context, status=statuses or None, task=tasks or None)[:limit])
    return render_to_string("django_tasks_live/task_list.html", {
        "items": [render_item(run, run.task_name, follow_task=False) for run in runs],
        # What the client clones for runs that appear later.
        "blank": render_item(None, "", follow_task=False,
                             template_name="django_tasks_live/task_item/default.html"),
        "statuses": ",".join(statuses),
        "tasks": ",".join(tasks),
        "limit": limit,
    })


@register.filter
def tasks_live_hidden(status: str, shown_in: str) -> str:
    """``hidden`` unless ``status`` is one of ``shown_in`` (comma-separated), as the client does."""
    return "" if status in _names(shown_in) else "hidden"
