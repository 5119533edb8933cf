"""Small helpers shared by the admin pages: links to runs and counts in words."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .. import conf
from ..models import Run

LINKS_SHOWN = 10  # a message names at most this many runs, then "and N more"


def run_url(run_id: int) -> str:
    return reverse("admin:django_tasks_live_run_change", args=[run_id])


def run_link(run_id: int) -> SafeString:
    return format_html('<a href="{}">#{}</a>', run_url(run_id), run_id)


def run_links(run_ids: Sequence[int], shown: int = LINKS_SHOWN) -> SafeString:
    """"#3, #2, #1" or "#9, #8, … and 120 more": a message never lists thousands of runs."""
    links = format_html_join(", ", "{}", ((run_link(run_id),) for run_id in run_ids[:shown]))
    if len(run_ids) > shown:
        return format_html("{} and {} more", links, f"{len(run_ids) - shown:,}")
    return links


def runs_in_words(count: int, word: str = "run") -> str:
    """"1 run", "8,361 runs"."""
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def live_config(stream_query: str, rows: Iterable[Run], **extra: Any) -> dict[str, Any]:
    """What admin_live.js needs: the stream URL (with this page's filters), the states of
    the runs on the page (a snapshot holds only the newest runs) and the run URL pattern."""
    stream = conf.get("SSE_URL")
    return {
        "streamUrl": stream + ("?" + stream_query if stream_query else ""),
        "runUrl": run_url(0).replace("/0/", "/{id}/"),
        "rows": [run.to_state() for run in rows],
        **extra,
    }


def refuse_hidden_action(modeladmin: admin.ModelAdmin, request: HttpRequest) -> None:
    """A POST naming one of the admin's actions that this user is not offered (it needs
    a permission they lack) is forged: 403, not Django's quiet "no action selected"."""
    name = request.POST.get("action", "") if request.method == "POST" else ""
    if name in (modeladmin.actions or ()) and name not in modeladmin.get_actions(request):
        raise PermissionDenied
