"""The runs changelist at scale: status tabs with capped counts, filters, search.

No query here reads more than ``COUNT_CAP + 1`` index entries per count: a count is
``SELECT COUNT(*) FROM (… LIMIT 10001)`` over the filtered runs, exact below the cap and
shown as "10,000+" above it (Mission Control caps at 500k, GoodJob's uncapped counts
were its slowest queries at 3.5M jobs). Per-status counts read the ``tl_run_status``
(or ``tl_run_task_status``) index, so at a million runs they cost what 10,000 cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.http import HttpRequest

from .. import store
from ..models import Run, Worker
from ..registry import registry
from ..states import Status
from ..stats import COUNT_CAP, Count, capped_count

STATUS_PARAM = "status__exact"
INDEXED_FILTERS = {"task"}  # with the status: the tl_run_task_status index
WORKERS_LISTED = 30
_LABEL = re.compile(r"^([^:\s]{1,100}):(.{0,200})$")


FILTERED_COUNT_CAP = 1_000  # under a filter or search no index answers (see indexed)
UNCOUNTED_PARAMS = (STATUS_PARAM, "p", "o")  # the status tab, the page, the order


def indexed(params: Any, query: str) -> bool:
    """True when an index answers counts under these changelist parameters: no search,
    and no filter but the status and the task (``tl_run_status``, ``tl_run_task_status``)."""
    others = {key for key in params if key not in UNCOUNTED_PARAMS}
    return not query.strip() and others <= INDEXED_FILTERS


def count_cap(params: Any, query: str) -> int:
    """How far the changelist counts under these parameters."""
    return COUNT_CAP if indexed(params, query) else FILTERED_COUNT_CAP


class CappedPaginator(Paginator):
    """The admin paginator counts every matching row (a full scan at 1M runs); this one
    stops at ``cap``, so page links go as far as the cap and the total says "10,000+".
    Under a filter no index answers (a label, words of an error) each counted row is
    read from the table, so the cap is FILTERED_COUNT_CAP there (``RunAdmin.get_paginator``)."""

    def __init__(self, *args: Any, cap: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cap = COUNT_CAP if cap is None else cap

    @cached_property
    def capped(self) -> Count:
        return capped_count(self.object_list, self.cap)

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        return self.capped.value + (0 if self.capped.exact else 1)


@dataclass(frozen=True)
class Tab:
    label: str
    url: str
    count: Count | None  # None: not counted (no index answers it under these filters)
    status: str  # "" for All
    selected: bool


class RunChangeList(ChangeList):
    """The changelist plus ``tabs`` (one per status, counts under the other filters)
    and ``result_count_text`` ("10,000+" when capped)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_count_text = str(self.paginator.capped)
        self.result_count_exact = self.paginator.capped.exact
        self.tabs = self._tabs(request)
        self.live = self._live()

    def _live(self) -> dict[str, Any]:
        """The live script's settings: the stream filtered like this page where the stream
        can (task, label), the rest matched in the page (status, queue); new runs are
        added to the first page sorted newest first only, and not looked for at all under
        filters the page cannot check (search, worker, dates)."""
        from .common import live_config

        params = {key: value for key, value in self.params.items() if key != "p"}
        stream: dict[str, str] = {}
        if params.get("task"):
            stream["task"] = str(params["task"])
        if params.get("label"):
            stream["label"] = str(params["label"])
        unchecked = {"worker", "schedule", "o"} | {
            k for k in params if k.startswith(("created_at", "finished_at"))}
        detect = not self.query and not (unchecked & set(params))
        rows = list(self.result_list)
        return live_config(urlencode(stream), rows,
                           # The newest matching run now: anything above it is new.
                           maxId=self.queryset.order_by("-id").values_list("id", flat=True).first()
                           or 0,
                           detectNew=detect,
                           insertNew=detect and self.page_num <= 1,
                           filters={"status": str(params.get(STATUS_PARAM) or ""),
                                    "queue": str(params.get("queue") or "")})

    def _tabs(self, request: HttpRequest) -> list[Tab]:
        # The same filters and search, without the status: what each tab would list.
        # (Django excludes a filter whose expected parameters equal this list exactly.)
        status_params = next(spec.expected_parameters() for spec in self.filter_specs
                             if isinstance(spec, HiddenChoicesFilter))
        base = self.get_queryset(request, exclude_parameters=status_params)
        current = self.params.get(STATUS_PARAM, "")
        if isinstance(current, list):
            current = current[-1] if current else ""
        # Counts only where an index answers them (tl_run_status, tl_run_task_status):
        # under a label, queue, worker, date or search filter a rare status would be
        # counted by reading every run, nine times per page view.
        counted = indexed(self.params, self.query)

        def count(qs: QuerySet[Run]) -> Count | None:
            return capped_count(qs) if counted else None

        tabs = [Tab("All", self.get_query_string(remove=[STATUS_PARAM, "p"]),
                    count(base), "", current == "")]
        for status in Status:
            tabs.append(Tab(
                status.label,
                self.get_query_string({STATUS_PARAM: status.value}, remove=["p"]),
                count(base.filter(status=status.value)),
                status.value,
                current == status.value,
            ))
        return tabs


class HiddenChoicesFilter(admin.ChoicesFieldListFilter):
    """Status filtering without a sidebar list: the tabs above the list show it."""

    template = "admin/django_tasks_live/hidden_filter.html"


class TaskNameFilter(admin.SimpleListFilter):
    """Task choices from the registry and Task rows, never a scan of the runs table."""

    title = "task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = {spec.name for spec in registry} | set(store.task_names())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(task_name=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        queues = {"default"} | {spec.queue for spec in registry}
        if self.value():
            queues.add(self.value())
        return [(queue, queue) for queue in sorted(queues)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(queue=self.value()) if self.value() else queryset


class ScheduleFilter(admin.SimpleListFilter):
    """``?schedule=<id>``: the runs a schedule made (its fires and its "Run now" runs),
    read through the run's schedule foreign-key index. Shown only while set: the link
    comes from the schedule's page, and listing every schedule here would be noise."""

    title = "schedule"
    parameter_name = "schedule"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from ..models import Schedule

        value = self.value()
        if not value or not value.isdigit():
            return []
        name = Schedule.objects.filter(pk=int(value)).values_list("name", flat=True).first()
        return [(value, name or f"#{value} (deleted)")]

    def has_output(self) -> bool:
        return bool(self.value())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if not self.value():
            return queryset
        if not self.value().isdigit():
            from django.contrib.admin.options import IncorrectLookupParameters

            raise IncorrectLookupParameters(f"A schedule filter is an id, got {self.value()!r}.")
        return queryset.filter(schedule_id=int(self.value()))


class ExecutorFilter(admin.SimpleListFilter):
    """The engines this app knows (a field filter would SELECT DISTINCT over every run)."""

    title = "executor"
    parameter_name = "executor__exact"  # the URL a field filter had

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from ..engines import NAMES

        return [(name, name) for name in NAMES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(executor=self.value()) if self.value() else queryset


class WorkerFilter(admin.SimpleListFilter):
    """Runs a worker ran or runs now (its current claim or one of its past attempts)."""

    title = "worker"
    parameter_name = "worker"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = list(Worker.objects.order_by("-heartbeat_at").values_list("id", flat=True)
                   [:WORKERS_LISTED])
        if self.value() and self.value() not in ids:
            ids.append(self.value())
        return [(worker_id, worker_id) for worker_id in ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if not self.value():
            return queryset
        return queryset.filter(Q(worker_id=self.value()) | Q(worker_ids__contains=[self.value()])
                               if _json_contains_supported() else Q(worker_id=self.value()))


def _json_contains_supported() -> bool:
    from django.db import connections, router

    return connections[router.db_for_read(Run)].features.supports_json_field_contains


class LabelFilter(admin.SimpleListFilter):
    """``?label=key:value`` (typed in the box), e.g. ``tenant:acme``."""

    title = "label (key:value)"
    parameter_name = "label"
    template = "admin/django_tasks_live/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("", "")]  # the template renders a text box; this keeps the filter shown

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if not self.value():
            return queryset
        match = _LABEL.match(self.value())
        if match is None:
            from django.contrib.admin.options import IncorrectLookupParameters

            raise IncorrectLookupParameters(f"A label filter is key:value, got {self.value()!r}.")
        key, value = match.groups()
        return queryset.alias(_tl_label=KeyTransform(key, "labels")).filter(_tl_label=value)

    def choices(self, changelist: Any) -> Any:
        yield {
            "value": self.value() or "",
            "parameter": self.parameter_name,
            "others": [(k, v) for k, v in changelist.params.items()
                       if k not in (self.parameter_name, "p")],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name, "p"]),
        }


def search(queryset: QuerySet[Run], term: str) -> QuerySet[Run]:
    """Search by run id (a number), task name or error type (exact, both indexed or
    cheap), or words of the error message (a substring)."""
    term = term.strip()
    if not term:
        return queryset
    if term.lstrip("#").isdigit() and len(term) < 19:
        return queryset.filter(pk=int(term.lstrip("#")))
    return queryset.filter(Q(task_name=term) | Q(error_type=term) | Q(error_type__endswith=f".{term}")
                           | Q(error__icontains=term))
