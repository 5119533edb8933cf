"""Bulk Cancel and Rerun: on the selection or on every run matching the filter.

The action first answers a confirmation page saying how many runs it will touch; the
confirmed POST goes to :mod:`django_tasks_live.bulk`, which works in bounded batches
(one short transaction each) and stops after ``bulk.MAX_RUNS`` runs or
``bulk.MAX_SECONDS``, so "all matching" over 100,000 runs never holds one transaction
or times out the request. The result is a handful of messages in words, never one
message per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html

from .. import bulk
from ..models import Run
from ..states import Status
from .changelist import capped_count
from .common import run_links, runs_in_words

CONFIRM = "tl_confirm"


def _status_words(status: str) -> str:
    try:
        return Status(status).label.lower()
    except ValueError:
        return status


def report_cancel(modeladmin: admin.ModelAdmin, request: HttpRequest, done: bulk.BulkOutcome) -> None:
    say = modeladmin.message_user
    if done.done:
        say(request, format_html("Canceled {} that had not started: {}.",
                                 runs_in_words(len(done.done)), run_links(done.done)),
            messages.SUCCESS)
    if done.requested:
        say(request, format_html(
            "Cancel requested for {}: {} stop at the handler's next progress update or "
            "check and then show as canceled: {}.",
            runs_in_words(len(done.requested), "running run"),
            "it will" if len(done.requested) == 1 else "they will", run_links(done.requested)),
            messages.SUCCESS)
    if done.stopping:
        say(request, format_html("{} already asked to stop (nothing more to do): {}.",
                                 runs_in_words(len(done.stopping)), run_links(done.stopping)),
            messages.INFO)
    _report_refused(modeladmin, request, done, "a finished run cannot be canceled")
    _report_rest(modeladmin, request, done, "canceled", "cancel")


def report_rerun(modeladmin: admin.ModelAdmin, request: HttpRequest, done: bulk.BulkOutcome) -> None:
    if done.new_runs:
        modeladmin.message_user(request, format_html(
            "Started {}: {} (reruns of {}).", runs_in_words(len(done.new_runs), "rerun"),
            run_links(done.new_runs), run_links(done.done)), messages.SUCCESS)
    _report_refused(modeladmin, request, done, "only finished runs can be rerun")
    _report_rest(modeladmin, request, done, "rerun", "rerun")


def _report_refused(modeladmin: admin.ModelAdmin, request: HttpRequest, done: bulk.BulkOutcome,
                    why: str) -> None:
    for status, run_ids in sorted(done.refused.items()):
        modeladmin.message_user(request, format_html(
            "Left {} as they are ({} {}; {}): {}.",
            runs_in_words(len(run_ids)), "it is" if len(run_ids) == 1 else "they are",
            _status_words(status), why, run_links(run_ids)), messages.WARNING)


def _report_rest(modeladmin: admin.ModelAdmin, request: HttpRequest, done: bulk.BulkOutcome,
                 past: str, verb: str) -> None:
    for run_id, why in list(done.errors.items())[:10]:
        modeladmin.message_user(request, format_html("Run {} could not be {}: {}",
                                                     run_links([run_id]), past, why),
                                messages.ERROR)
    if len(done.errors) > 10:
        modeladmin.message_user(request, f"{len(done.errors) - 10:,} more runs could not be {past}.",
                                messages.ERROR)
    if done.remaining:
        modeladmin.message_user(request, (
            f"Stopped after {done.touched:,} runs (one request handles at most "
            f"{bulk.MAX_RUNS:,} runs or {bulk.MAX_SECONDS:g} s): more runs match, "
            f"{verb} all matching again to continue."), messages.WARNING)
    if not done.touched:
        modeladmin.message_user(request, "No runs matched: nothing was done.", messages.INFO)


def _filter_words(key: str) -> str:
    """"status__exact" -> "status", "created_at__gte" -> "created at from", "q" -> "search"."""
    if key == "q":
        return "search"
    for suffix, words in (("__exact", ""), ("__gte", " from"), ("__lt", " before"),
                          ("__isnull", " is empty")):
        if key.endswith(suffix):
            key = key[: -len(suffix)] + words
    return key.replace("_", " ")


def confirm_or_run(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Run],
    *,
    verb: str,
    run: Callable[[QuerySet[Run]], bulk.BulkOutcome],
    report: Callable[[admin.ModelAdmin, HttpRequest, bulk.BulkOutcome], None],
) -> TemplateResponse | None:
    """The confirmation page, or (once confirmed) the bulk work and its messages."""
    if request.POST.get(CONFIRM) == "yes":
        report(modeladmin, request, run(queryset))
        return None
    across = request.POST.get("select_across") == "1"
    count = capped_count(queryset, bulk.MAX_RUNS)
    opts = modeladmin.model._meta
    context: dict[str, Any] = {
        **modeladmin.admin_site.each_context(request),
        "title": f"{verb} runs: are you sure?",
        "opts": opts,
        "verb": verb,
        "count": count,
        "count_words": runs_in_words(count.value) if count.exact else
        f"more than {count.value:,} runs",
        "max_runs": bulk.MAX_RUNS,
        "across": across,
        "action": request.POST.get("action", ""),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "confirm_name": CONFIRM,
        "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "preview": list(queryset.order_by("-id")[:10]),
        "filters": [(_filter_words(key), value) for key, value in request.GET.items()
                    if key not in ("p", "o")],
        "back_url": request.get_full_path(),
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/django_tasks_live/run/bulk_confirm.html", context)
