"""HTTP verbs on runs (start, cancel, rerun, state) and the per-status run pages.

The verbs answer JSON: the run's public state on success, ``{"error": reason}`` with
400/403/404/409 otherwise. They go through :mod:`api` and :mod:`store` only, and are
CSRF-protected like any Django POST view.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from . import api, authz, store
from .models import Run
from .registry import TaskSpec, UnknownTask, registry
from .states import IllegalTransition, Status

MAX_RUN_ID = 2**63 - 1
# Form fields that are never handler arguments.
RESERVED_FIELDS = {"csrfmiddlewaretoken", "next"}
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _done(request: HttpRequest, run: Run, status: int = 200) -> HttpResponse:
    """The run's state as JSON, or a redirect to a safe ``next`` for plain HTML forms."""
    target = request.POST.get("next") if not _is_json(request) else None
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return JsonResponse({"run": run.to_state()}, status=status)


def _is_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json"


# ---------------------------------------------------------------- start


def _coerce(spec: TaskSpec, name: str, values: list[str]) -> Any:
    """A form value (always text) as the handler parameter's declared scalar type."""
    param = spec.signature.parameters.get(name)
    kind = _scalar_type(param) if param is not None else None
    if len(values) > 1:
        return [_convert(kind, name, value) for value in values]
    return _convert(kind, name, values[0])


def _scalar_type(param: inspect.Parameter) -> type | None:
    annotation = param.annotation
    if isinstance(annotation, str):  # postponed annotations: read the plain names only
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation)
    if annotation in (int, float, bool, str):
        return annotation
    default = param.default
    if default is not inspect.Parameter.empty and type(default) in (int, float, bool):
        return type(default)
    return None


def _convert(kind: type | None, name: str, value: str) -> Any:
    if kind is bool:
        word = value.strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"{name} must be a boolean (true/false), got {value!r}.")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"{name} must be {what}, got {value!r}.") from None
    return value


def _kwargs(request: HttpRequest, spec: TaskSpec) -> dict[str, Any]:
    """Handler arguments: a JSON object body, or form fields typed by the handler signature."""
    if _is_json(request):
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"The body is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise ValueError("The JSON body must be an object of keyword arguments.")
        return data
    return {
        key: _coerce(spec, key, request.POST.getlist(key))
        for key in request.POST
        if key not in RESERVED_FIELDS
    }


@require_POST
def start(request: HttpRequest, task_name: str) -> HttpResponse:
    """Start a registered task with keyword arguments from the body; the caller owns the run."""
    try:
        spec = registry.get(task_name)
    except UnknownTask as exc:
        return _error(404, str(exc))
    if not authz.can_start(request.user, task_name):
        return _error(403, f"You may not start {task_name!r}.")
    try:
        run = api.using(owner=request.user).start(task_name, **_kwargs(request, spec))
    except (TypeError, ValueError) as exc:
        return _error(400, str(exc))
    return _done(request, run, status=201)


# ---------------------------------------------------------------- one run


def _run_for(request: HttpRequest, run_id: int) -> Run | JsonResponse:
    """The run if it exists and the user may act on it, else the error response."""
    if run_id > MAX_RUN_ID:
        return _error(404, f"Run {run_id} does not exist.")
    try:
        run = store.get_run(run_id)
    except Run.DoesNotExist:
        return _error(404, f"Run {run_id} does not exist.")
    if not authz.can_manage_run(request.user, run):
        return _error(403, f"You may not act on run {run_id}.")
    return run


@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run_for(request, run_id)
    if isinstance(run, JsonResponse):
        return run
    return JsonResponse({"run": run.to_state()})


@require_POST
def cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run_for(request, run_id)
    if isinstance(run, JsonResponse):
        return run
    try:
        return _done(request, api.cancel(run.pk))
    except IllegalTransition as exc:
        return _error(409, f"Run {run.pk} is {exc.current} and cannot be canceled.")


@require_POST
def rerun(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run_for(request, run_id)
    if isinstance(run, JsonResponse):
        return run
    try:
        return _done(request, api.rerun(run.pk), status=201)
    except (UnknownTask, TypeError, ValueError) as exc:  # not finished, handler gone or changed
        return _error(409, str(exc))


# ---------------------------------------------------------------- pages


@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """Runs of one status (``?status=running``; none: all), live on the page."""
    status = request.GET.get("status", "")
    if status and status not in Status.values:
        return HttpResponse(
            f"Unknown status {status!r}; use one of: {', '.join(Status.values)}.",
            status=400, content_type="text/plain; charset=utf-8",
        )
    if not request.user.is_authenticated:
        return HttpResponse("Log in to see runs.", status=403, content_type="text/plain; charset=utf-8")
    return render(request, "django_tasks_live/runs.html", {
        "status": status,
        "statuses": Status.choices,
    })
