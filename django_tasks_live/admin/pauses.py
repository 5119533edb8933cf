"""Pause and resume from the admin: the buttons of the Tasks list, the Queues page, and
the one POST that pauses or resumes a task or a queue (the ``pause_run`` permission).

A button posts ``pause=<kind>:<name>`` or ``resume=<kind>:<name>``; the Tasks list's
buttons sit inside the changelist's own form, so they submit a separate form
(``form="tl-pause-form"``) that the page's template puts after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString

from .. import authz, conf, pauses
from ..models import Pause, Run
from ..queues import configured_queues
from ..registry import registry
from ..states import CLAIMABLE
from .changelist import Count, capped_count

VERBS = ("pause", "resume")
FORM_ID = "tl-pause-form"
PAUSED_BADGE = SafeString('<span class="tl-paused">paused</span>')


def pause_url() -> str:
    return reverse("admin:django_tasks_live_task_pause")


def queues_url() -> str:
    return reverse("admin:django_tasks_live_task_queues")


def button(kind: str, name: str, paused: bool, *, in_changelist: bool = False) -> SafeString:
    """The Pause or Resume button of one task or queue."""
    verb = "resume" if paused else "pause"
    extra = format_html(' form="{}" formaction="{}"', FORM_ID, pause_url()) if in_changelist else ""
    return format_html('<button type="submit" class="button tl-{}-button" name="{}" value="{}:{}" '
                       'data-tl-button="{}"{}>{}</button>', verb, verb, kind, name, verb, extra,
                       verb.capitalize())


def state(kind: str, name: str, paused: pauses.PauseSet) -> SafeString:
    """"paused" (a badge) or "—"."""
    names = paused.tasks if kind == Pause.TASK else paused.queues
    return PAUSED_BADGE if name in names else SafeString("—")


def act(modeladmin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """The POST of a Pause or Resume button (CSRF-checked by the admin site; the caller
    allows POST only)."""
    if not authz.can_pause(request.user):
        raise PermissionDenied
    for verb in VERBS:
        if verb in request.POST:
            kind, _, name = request.POST[verb].partition(":")
            break
    else:
        kind = name = ""
    target = {kind: name} if kind in (Pause.TASK, Pause.QUEUE) else {}
    try:
        if verb == "resume":
            found = pauses.resume(**target)
            modeladmin.message_user(request, f"Resumed {kind} {name}: workers claim its waiting "
                                    "runs now." if found else f"{kind} {name} was not paused.",
                                    messages.SUCCESS if found else messages.INFO)
        else:
            pauses.pause(**target, reason=request.POST.get("reason", ""),
                         by=request.user.get_username())
            modeladmin.message_user(request, f"Paused {kind} {name}: no worker claims its runs "
                                    "until it is resumed (running runs finish).", messages.SUCCESS)
    except ValueError as exc:
        modeladmin.message_user(request, f"Nothing was paused or resumed: {exc}", messages.ERROR)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        back = queues_url()
    return HttpResponseRedirect(back)


@dataclass
class QueueRow:
    name: str
    waiting: Count  # runs waiting to be claimed (capped)
    pause: Pause | None


def known_queues(paused_rows: list[Pause]) -> list[str]:
    """Every queue this site knows of: declared (TASKS QUEUES), used by a task, given an
    engine, or paused; no scan of runs."""
    names = {"default"} | {spec.queue for spec in registry}
    names |= set(configured_queues() or ())
    names |= set(conf.get("QUEUE_EXECUTORS") or {})
    names |= {row.name for row in paused_rows if row.kind == Pause.QUEUE}
    return sorted(names)


def queues_view(modeladmin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """Queues with their waiting runs and pause state, and the paused tasks."""
    if not modeladmin.has_view_permission(request):
        raise PermissionDenied
    rows = pauses.rows()
    by_queue = {row.name: row for row in rows if row.kind == Pause.QUEUE}
    waiting = Run.objects.filter(status__in=sorted(CLAIMABLE))  # the claim index, per queue
    queues = [QueueRow(name, capped_count(waiting.filter(queue=name)), by_queue.get(name))
              for name in known_queues(rows)]
    return TemplateResponse(request, "admin/django_tasks_live/task/queues.html", {
        **modeladmin.admin_site.each_context(request),
        "title": "Queues and pauses",
        "opts": modeladmin.model._meta,
        "queues": queues,
        "paused_tasks": [row for row in rows if row.kind == Pause.TASK],
        "can_pause": authz.can_pause(request.user),
        "pause_url": pause_url(),
    })
