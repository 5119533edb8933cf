"""Template tags that render runs with the attributes ``tasks_live.js`` keeps live.

``{% load tasks_live %}`` then:

- ``{% tasks_live_script %}``: the client script and its configuration (once per page);
- ``{% task_item "import-data" %}``: the latest run of a task (or ``{% task_item run %}``)
  through the first existing template of
  ``django_tasks_live/task_item/<task>/<status>.html``, ``.../<task>/default.html``,
  ``.../task_item/<status>.html``, ``.../task_item/default.html``;
- ``{% task_list status="running" %}``: the newest runs of a status, live.

Both take ``label="tenant:acme,region:eu"``: only runs carrying every one of these
labels (the same ``key:value`` form as the stream's ``?label=``).

A page goes live inside an element with ``data-tasks-live-stream`` (empty: the
``SSE_URL`` setting). Users see the runs the default stream rule lets them see:
staff all runs, others their own.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
import re
import types
import typing
from typing import Any

from django import template
from django.middleware.csrf import get_token
from django.template import TemplateSyntaxError
from django.template.loader import render_to_string, select_template
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, json_script
from django.utils.safestring import SafeString

from .. import authz, conf, store
from ..models import Run
from ..registry import UnknownTask, registry
from ..sse_query import parse_labels
from ..states import TERMINAL, Status

register = template.Library()

IDLE = "idle"  # the status shown for a task that never ran
# Task names that may be used in a template path (no "..", no slashes).
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
RUN_ID_PLACEHOLDER = 2**31 - 7  # reversed into URLs, then swapped for "{id}"
TASK_PLACEHOLDER = "__task__"
LABELS = {**dict(Status.choices), IDLE: "Never run"}
# What a finished card says instead of its last progress message: (without, with duration).
OUTCOMES = {
    Status.COMPLETED.value: ("Done", "Done in {duration}"),
    Status.FAILED.value: ("Failed", "Failed after {duration}"),
    Status.CANCELED.value: ("Canceled", "Canceled after {duration}"),
    Status.TIMED_OUT.value: ("Timed out", "Timed out after {duration}"),
}
TIME_KEY = re.compile(r"(^|_)(at|time|timestamp|date)$")


def client_config(request: Any = None) -> dict[str, Any]:
    """What ``tasks_live.js`` reads from ``#tasks-live-config``."""
    config: dict[str, Any] = {
        "streamUrl": conf.get("SSE_URL"),
        "initialDelay": conf.get("CLIENT_RECONNECT_INITIAL_MS"),
        "maxDelay": conf.get("CLIENT_RECONNECT_MAX_MS"),
        "maxRetries": conf.get("CLIENT_RECONNECT_MAX_RETRIES"),
        "labels": LABELS,
        "outcomes": OUTCOMES,
        "loginUrl": login_url(),
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


def login_url() -> str | None:
    """``settings.LOGIN_URL`` as a path (it may be a URL name), or None if it resolves nowhere."""
    from django.conf import settings
    from django.shortcuts import resolve_url

    try:
        return resolve_url(settings.LOGIN_URL)
    except NoReverseMatch:
        return None


def login_href(request: Any) -> str:
    """The login page, coming back to this page afterwards."""
    from django.utils.http import urlencode

    url = login_url() or ""
    here = request.get_full_path() if request is not None else "/"
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'next': here})}"


# ---------------------------------------------------------------- readable text
# The same rules as tasks_live.js (duration, outcomeText, readable), so a card reads
# alike when rendered and after the stream updated it.


def duration(seconds: float | None) -> str:
    """3.2 s, 42 s, 3 min 5 s, 1 h 2 min."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 10:
        return f"{math.floor(seconds * 10) / 10:.1f} s"
    if seconds < 60:
        return f"{math.floor(seconds)} s"
    if seconds < 3600:
        sec = math.floor(seconds % 60)
        return f"{math.floor(seconds / 60)} min" + (f" {sec} s" if sec else "")
    minutes = math.floor((seconds % 3600) / 60)
    return f"{math.floor(seconds / 3600)} h" + (f" {minutes} min" if minutes else "")


def outcome_text(run: Run) -> str | None:
    words = OUTCOMES.get(run.status)
    if words is None:
        return None
    if run.started_at and run.finished_at:
        seconds = (run.finished_at - run.started_at).total_seconds()
        return words[1].replace("{duration}", duration(seconds))
    return words[0]


def local_time(moment: dt.datetime) -> str:
    """A moment in the site's time zone (the browser's, once the client renders it)."""
    local = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    same_day = local.date() == timezone.localdate()
    return local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def when(run: Run) -> tuple[str, dt.datetime] | None:
    """The moment a card shows: finished, started, due (future only) or queued."""
    for word, moment in (("finished", run.finished_at), ("started", run.started_at),
                         ("due", run.run_after), ("queued", run.created_at)):
        if moment is not None and (word != "due" or moment > timezone.now()):
            return word, moment
    return None


def readable(value: Any, key: str | None = None, depth: int = 0) -> str:
    """A result for people: "key: value" lines, times (``*_at`` keys) local, short numbers."""
    if value is None:
        return ""
    timed = bool(key and TIME_KEY.search(key))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if timed and 1e9 <= value < 1e11:
            return local_time(dt.datetime.fromtimestamp(value, dt.UTC))
        rounded = round(value, 3)
        return str(int(rounded)) if rounded == int(rounded) else repr(rounded)
    if isinstance(value, str):
        if timed and re.match(r"^\d{4}-\d\d-\d\dT", value):
            try:
                return local_time(dt.datetime.fromisoformat(value))
            except ValueError:
                return value
        return value
    if depth > 0:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, list):
        return ", ".join(readable(item, None, 1) for item in value)
    if isinstance(value, dict):
        return "\n".join(f"{name}: {readable(item, name, 1)}" for name, item in value.items())
    return str(value)


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


def _label_filter(tag: str, value: str) -> dict[str, str]:
    try:
        return parse_labels(_names(value))
    except ValueError as exc:
        raise TemplateSyntaxError(f"{tag}: {exc}") from None


def item_context(run: Run | None, task_name: str, *, follow_task: bool, label: str = "",
                 request: Any = None, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the item templates get; numbers are preformatted so no locale alters the CSS."""
    status = run.status if run is not None else IDLE
    state = run.to_state() if run is not None else None
    percent = _percent(run)
    moment = when(run) if run is not None else None
    user = getattr(request, "user", None)
    anonymous = request is not None and not getattr(user, "is_authenticated", False)
    kwargs = kwargs or {}
    fields = argument_fields(task_name, kwargs) if follow_task else []
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
        "result_text": readable(state["result"]) if state and "result" in state else "",
        "outcome_text": outcome_text(run) if run is not None else None,
        "when_word": moment[0] if moment else "",
        "when_text": f"{moment[0]} {local_time(moment[1])}" if moment else "",
        "when_iso": moment[1].isoformat() if moment else "",
        "terminal": status in TERMINAL,
        "follow_task": follow_task,
        "label": label,  # the label filter of a followed task (the client applies it too)
        # Logged out: the card offers the login page (coming back here) instead of Start.
        "anonymous": anonymous,
        "login_href": login_href(request) if anonymous else "",
        "kwargs_json": json.dumps(kwargs, separators=(",", ":")) if kwargs else "",
        "kwargs": kwargs,
        "fields": fields,
        "form_id": f"tasks-live-form-{SAFE_ID.sub('-', task_name)}" if fields else "",
        "start_url": _start_url(task_name) if fields else "",
        "csrf_token": get_token(request) if fields and request is not None else "",
        "next_url": request.get_full_path() if request is not None else "",
    }


SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def _start_url(task_name: str) -> str:
    try:
        return reverse("tasks_live:start", args=[task_name])
    except NoReverseMatch:
        return ""


# ---------------------------------------------------------------- arguments form


def argument_fields(task_name: str, given: dict[str, Any]) -> list[dict[str, Any]]:
    """Form fields for a Start that needs arguments the tag did not give, else [].

    Built from the handler's signature only (the start endpoint validates the values):
    one field per parameter not given, typed by its annotation or default.
    """
    try:
        spec = registry.get(task_name)
    except UnknownTask:
        return []
    params = [p for p in list(spec.signature.parameters.values())[1:]  # [0] is ctx
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given]
    if not any(p.default is p.empty for p in params):
        return []  # Start works as it is
    return [_field(param) for param in params]


INPUTS = {"int": ("number", "1"), "float": ("number", "any"), "bool": ("checkbox", ""),
          "str": ("text", ""), "json": ("text", "")}


def _field(param: inspect.Parameter) -> dict[str, Any]:
    kind = argument_type(param)
    required = param.default is param.empty
    value = "" if required or param.default is None else param.default
    if kind == "json" and not required and param.default is not None:
        value = json.dumps(param.default)
    input_type, step = INPUTS[kind]
    return {"name": param.name, "label": param.name.replace("_", " "), "type": kind,
            "input_type": input_type, "step": step, "required": required,
            "value": "" if kind == "bool" else value, "checked": kind == "bool" and value is True}


def argument_type(param: inspect.Parameter) -> str:
    """int, float, bool, str or json (lists, dicts) from the annotation, else the default."""
    annotation = param.annotation
    if isinstance(annotation, str):  # postponed annotations: read the plain names
        name = annotation.split("[", 1)[0].split("|", 1)[0].strip()
        annotation = {"int": int, "float": float, "bool": bool, "str": str, "list": list,
                      "dict": dict}.get(name, param.empty)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: X
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = options[0] if len(options) == 1 else param.empty
    annotation = typing.get_origin(annotation) or annotation
    if annotation is param.empty and param.default is not param.empty:
        annotation = type(param.default)
    if annotation in (bool, int, float, str):
        return annotation.__name__
    return "json" if annotation in (list, dict, tuple) else "str"


def render_item(run: Run | None, task_name: str, *, follow_task: bool,
                template_name: str | None = None, label: str = "", request: Any = None,
                kwargs: dict[str, Any] | None = None) -> SafeString:
    ctx = item_context(run, task_name, follow_task=follow_task, label=label, request=request,
                       kwargs=kwargs)
    names = [template_name] if template_name else _templates(task_name, ctx["status"])
    return SafeString(select_template(names).render(ctx))


@register.simple_tag(takes_context=True)
def task_item(context: template.Context, task: str | Run, template: str | None = None,
              label: str = "", **kwargs: Any) -> SafeString:
    """A task's latest run (``{% task_item "name" %}``, optionally the latest carrying
    ``label``) or one run (``{% task_item run %}``).

    Other keyword arguments are the handler's (``{% task_item "import-data" url=u %}``):
    Start sends them. A handler that still needs arguments gets a small form for them.
    """
    request = context.get("request")
    if isinstance(task, Run):
        return render_item(task, task.task_name, follow_task=False, template_name=template,
                           request=request)
    if not isinstance(task, str) or not task:
        raise TemplateSyntaxError(f"task_item takes a task name or a Run, got {task!r}.")
    labels = _label_filter("task_item", label)
    _check_kwargs(task, kwargs)
    run = _visible_runs(context, task=[task], labels=labels or None).first()
    return render_item(run, task, follow_task=True, template_name=template,
                       label=",".join(f"{k}:{v}" for k, v in labels.items()),
                       request=request, kwargs=kwargs)


def _check_kwargs(task_name: str, kwargs: dict[str, Any]) -> None:
    """A template that names arguments the handler has not is a mistake: say so at once."""
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise TemplateSyntaxError(f"task_item {task_name!r}: arguments must be JSON ({exc}).") from None
    try:
        spec = registry.get(task_name)
    except UnknownTask:
        return  # rendered where the handler is not registered: the endpoint will tell
    try:
        spec.signature.bind_partial(None, **kwargs)
    except TypeError as exc:
        raise TemplateSyntaxError(f"task_item {task_name!r}: {exc}.") from None


def _names(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@register.simple_tag(takes_context=True)
def task_list(context: template.Context, status: str = "", task: str = "",
              limit: int | None = None, label: str = "") -> SafeString:
    """The newest runs (of ``status``, ``task`` and ``label``, comma-separated); new ones
    appear live."""
    statuses, tasks = _names(status), _names(task)
    unknown = [s for s in statuses if s not in Status.values]
    if unknown:
        raise TemplateSyntaxError(f"task_list: unknown status {', '.join(unknown)}.")
    labels = _label_filter("task_list", label)
    limit = limit or conf.get("LIST_LIMIT")
    runs = list(_visible_runs(context, status=statuses or None, task=tasks or None,
                              labels=labels or None)[:limit])
    request = context.get("request")
    return render_to_string("django_tasks_live/task_list.html", {
        "items": [render_item(run, run.task_name, follow_task=False) for run in runs],
        "anonymous": request is not None and not getattr(request.user, "is_authenticated", False),
        "login_href": login_href(request) if request is not None else "",
        # What the client clones for runs that appear later.
        "blank": render_item(None, "", follow_task=False,
                             template_name="django_tasks_live/task_item/default.html"),
        "statuses": ",".join(statuses),
        "tasks": ",".join(tasks),
        "labels": ",".join(f"{k}:{v}" for k, v in labels.items()),
        "limit": limit,
    })


@register.filter
def tasks_live_hidden(status: str, shown_in: str) -> str:
    """``hidden`` unless ``status`` is one of ``shown_in`` (comma-separated), as the client does."""
    return "" if status in _names(shown_in) else "hidden"
