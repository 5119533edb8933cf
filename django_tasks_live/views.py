"""HTTP verbs on runs (start, cancel, rerun, state) and the per-status run pages.

The verbs answer JSON: the run's public state on success, ``{"error": reason}`` with
400/403/404/409 otherwise. They go through :mod:`api` and :mod:`store` only, and are
CSRF-protected like any Django POST view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from . import api, authz, pauses, store
from .arguments import from_form
from .jsonvalues import parse_json
from .models import Run
from .registry import TaskSpec, UnknownTask, registry
from .sse_query import parse_labels
from .states import IllegalTransition, Status

MAX_RUN_ID = 2**63 - 1
# Form fields that are never handler arguments.
RESERVED_FIELDS = {"csrfmiddlewaretoken", "next"}


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


def _kwargs(request: HttpRequest, spec: TaskSpec) -> dict[str, Any]:
    """Handler arguments: a JSON object body, or form fields typed by the handler's
    annotations (:func:`arguments.from_form`); :func:`api.start` validates either."""
    if _is_json(request):
        data = parse_json(request.body or b"{}")  # no NUL/surrogate, bounded depth
        if not isinstance(data, dict):
            raise ValueError("The JSON body must be an object of keyword arguments.")
        return data
    return {
        key: from_form(spec, key, request.POST.getlist(key))
        for key in request.POST
        if key not in RESERVED_FIELDS
    }


def _page_of(request: HttpRequest) -> str:
    """The page a start came from (its ``next`` field, else the Referer), if it is this site's."""
    from urllib.parse import urlsplit

    for candidate in (request.POST.get("next") if not _is_json(request) else None,
                      request.headers.get("Referer")):
        if candidate and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            parts = urlsplit(candidate)
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def _log_in_first(request: HttpRequest) -> HttpResponse:
    """Logged out: log in, then land back on the page the Start came from (never on this
    POST-only URL, which a GET after login would answer with 405)."""
    from django.contrib.auth.views import redirect_to_login

    login = redirect_to_login(_page_of(request))
    if _is_json(request) or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"error": "Log in to start tasks.", "login_url": login["Location"]},
                            status=401)
    return login


@require_POST
def start(request: HttpRequest, task_name: str) -> HttpResponse:
    """Start a registered task with keyword arguments from the body; the caller owns the run."""
    # Authorised first: the 404 of an unknown task lists the registered ones.
    if not request.user.is_authenticated:
        return _log_in_first(request)
    if not authz.can_start(request.user, task_name):
        return _error(403, f"You may not start {task_name!r}.")
    try:
        spec = registry.get(task_name)
    except UnknownTask as exc:
        return _error(404, str(exc))
    try:
        run = api.using(owner=request.user).start(task_name, **_kwargs(request, spec))
    except (TypeError, ValueError) as exc:
        return _error(400, str(exc))
    return _done(request, run, status=201)


# ---------------------------------------------------------------- one run


def _run_for(request: HttpRequest, run_id: int,
             allowed: Callable[[Any, Run], bool] = authz.can_manage_run) -> Run | JsonResponse:
    """The run if it exists and ``allowed(user, run)``, else the error response."""
    if run_id > MAX_RUN_ID:
        return _error(404, f"Run {run_id} does not exist.")
    try:
        run = store.get_run(run_id)
    except Run.DoesNotExist:
        return _error(404, f"Run {run_id} does not exist.")
    if not allowed(request.user, run):
        if authz.can_view_run(request.user, run) and allowed is authz.can_rerun:
            return _error(403, f"You may not start {run.task_name!r}, so not rerun run {run_id}.")
        return _error(403, f"You may not act on run {run_id}.")
    return run


@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run_for(request, run_id, authz.can_view_run)
    if isinstance(run, JsonResponse):
        return run
    state = run.to_state()
    reason = pauses.current().run_reason(run)
    if reason:  # why a waiting run is not claimed
        state["paused"] = reason
    return JsonResponse({"run": state})


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
    run = _run_for(request, run_id, authz.can_rerun)
    if isinstance(run, JsonResponse):
        return run
    try:
        return _done(request, api.rerun(run.pk), status=201)
    except (UnknownTask, TypeError, ValueError) as exc:  # not finished, handler gone or changed
        return _error(409, str(exc))


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other URL under the JSON endpoints: a JSON 404 like theirs."""
    return _error(404, f"No endpoint at {request.path!r}.")


# ---------------------------------------------------------------- pages


@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """Runs of one status (``?status=running``; none: all), optionally of one task
    (``&task=``) and labels (``&label=k:v``), live on the page; the filters are those
    of :func:`api.runs`, with its error text."""
    status, task = request.GET.get("status", ""), request.GET.get("task", "")
    label_values = request.GET.getlist("label")
    try:
        labels = parse_labels(label_values)
        api.runs(status=status or None, task=task or None, labels=labels or None)  # checks them
    except (TypeError, ValueError) as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    if not request.user.is_authenticated:
        return HttpResponse("Log in to see runs.", status=403, content_type="text/plain; charset=utf-8")
    others = urlencode([("task", task)] * bool(task) + [("label", v) for v in label_values])
    return render(request, "django_tasks_live/runs.html", {
        "status": status,
        "task": task,
        "label": ",".join(label_values),
        "others": f"&{others}" if others else "",
        "statuses": Status.choices,
    })
