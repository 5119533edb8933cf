"""Workers: alive, lost or stopped from their heartbeat, the runs each holds now, how
many it processed and its uptime."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from .. import conf, store
from ..models import Worker
from ..states import ACTIVE
from .common import run_links

CURRENT_RUNS_READ = 500  # current runs read per page of workers (the rest: "and N more")


def worker_state(worker: Worker, now: dt.datetime | None = None) -> str:
    """"stopped" after a clean exit, "lost" once its heartbeat is older than the timeout."""
    if worker.stopped_at is not None:
        return "stopped"
    age = ((now or timezone.now()) - worker.heartbeat_at).total_seconds()
    return "lost" if age > conf.get("HEARTBEAT_TIMEOUT") else "alive"


def uptime_text(started_at: dt.datetime, end: dt.datetime) -> str:
    """How long from ``started_at`` to ``end``: "3 d 4 h", "2 h 5 min", "40 s"."""
    total = max(0, int((end - started_at).total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def worker_uptime(worker: Worker, now: dt.datetime | None = None) -> str:
    """A stopped worker's uptime ends when it stopped, a lost one's at its last heartbeat."""
    end = worker.stopped_at or (worker.heartbeat_at if worker.lost_at else None)
    return uptime_text(worker.started_at, end or now or timezone.now())


def current_runs(worker_ids: list[str]) -> dict[str, list[int]]:
    """Worker id -> ids of the runs it holds now (claimed, running, cancel requested),
    newest first: one read of the ``tl_run_active_worker`` index for a page of workers."""
    out: dict[str, list[int]] = {}
    rows = (store.runs(status=sorted(ACTIVE)).filter(worker_id__in=worker_ids)
            .values_list("worker_id", "id")[:CURRENT_RUNS_READ])
    for worker_id, run_id in rows:
        out.setdefault(worker_id, []).append(run_id)
    return out


class WorkerStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("alive", "alive"), ("lost", "lost"), ("stopped", "stopped")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Worker]) -> QuerySet[Worker]:
        cutoff = timezone.now() - dt.timedelta(seconds=conf.get("HEARTBEAT_TIMEOUT"))
        running = queryset.filter(stopped_at__isnull=True)
        return {
            "alive": running.filter(heartbeat_at__gte=cutoff),
            "lost": running.filter(heartbeat_at__lt=cutoff),
            "stopped": queryset.filter(stopped_at__isnull=False),
        }.get(self.value() or "", queryset)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("id", "state", "hostname", "pid", "queues", "concurrency", "running",
                    "processed", "uptime", "started_at", "heartbeat_at")
    readonly_fields = ("state", "running", "uptime")
    list_filter = (WorkerStateFilter,)
    search_fields = ("id", "hostname")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows are the workers' own heartbeats

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a live worker's row would make recovery treat its runs as lost.
        return obj is not None and worker_state(obj) != "alive" and super().has_delete_permission(
            request, obj)

    @admin.display(description="state")
    def state(self, worker: Worker) -> str:
        state = worker_state(worker)
        return format_html('<span class="tl-worker-{}">{}</span>', state, state)


    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One read for the page's workers, not one per row (kept on the rows: this admin
        # instance is shared by concurrent requests).
        current = current_runs([worker.id for worker in changelist.result_list])
        for worker in changelist.result_list:
            worker.current_run_ids = current.get(worker.id, [])
        return changelist

    @admin.display(description="current runs")
    def running(self, worker: Worker) -> SafeString:
        run_ids = getattr(worker, "current_run_ids", None)
        if run_ids is None:  # the worker's own page
            run_ids = current_runs([worker.id]).get(worker.id, [])
        if not run_ids:
            return mark_safe("—")
        return format_html('{} <a href="{}?{}" title="every run of this worker">all…</a>',
                           run_links(run_ids, shown=5),
                           reverse("admin:django_tasks_live_run_changelist"),
                           urlencode({"worker": worker.id}))

    @admin.display(description="uptime")
    def uptime(self, worker: Worker) -> str:
        return worker_uptime(worker)
