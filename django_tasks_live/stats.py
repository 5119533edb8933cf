"""Figures about runs, read in bounded time: capped counts, the latest run per task,
and the shared snapshot behind the dashboard, the Tasks page and the metrics endpoint.

Nothing here scans the runs table. Counts stop at ``COUNT_CAP``; the latest run per
task is one seek of ``tl_run_task_status`` per status; the snapshot (the dashboard,
the Tasks page's last day, the metrics) reads pre-aggregated rollups (:mod:`.rollups`),
the waiting and running runs, and the workers, once per ``SNAPSHOT_INTERVAL`` per
process whoever asks.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Count as Counted
from django.db.models import Min, OuterRef, QuerySet, Subquery
from django.utils import timezone

from . import conf, rollups, store
from .models import Task, Worker
from .states import ACTIVE, CLAIMABLE, Status

COUNT_CAP = 10_000
SNAPSHOT_INTERVAL = 5.0  # seconds between two reads of the snapshot in one process
ROLL_BUDGET = 0.1  # seconds of rolling (rollups.roll) at most per snapshot read
FAILED = frozenset({Status.FAILED, Status.TIMED_OUT})


@dataclass(frozen=True)
class Count:
    """A count that may be capped: ``exact`` False means "at least ``value``"."""

    value: int
    exact: bool

    def __str__(self) -> str:
        return f"{self.value:,}" if self.exact else f"{self.value:,}+"


def capped_count(queryset: QuerySet[Any], cap: int = COUNT_CAP) -> Count:
    """How many rows ``queryset`` has, reading at most ``cap + 1`` of them."""
    found = queryset.order_by()[: cap + 1].count()
    return Count(found, True) if found <= cap else Count(cap, False)


def latest_runs(names: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Task name -> (id, status) of its newest run, in ONE query over the tasks' rows:
    per status a scalar subquery that seeks ``tl_run_task_status`` (a ``task_name = x
    ORDER BY id DESC`` makes PostgreSQL walk the primary key backwards, the whole table
    for a task that never ran; a query per task and status cost 450 round trips)."""
    newest = {f"_tl_{status.value}": Subquery(
        store.runs(status=[status.value]).filter(task_name=OuterRef("name")).values("id")[:1])
        for status in Status}
    rows = Task.objects.filter(name__in=list(names)).annotate(**newest).values_list(
        "name", *newest)
    out: dict[str, tuple[int, str]] = {}
    for name, *ids in rows:
        found = [(run_id, status.value) for run_id, status in zip(ids, Status, strict=True) if run_id]
        if found:
            out[name] = max(found)
    return out


# ---------------------------------------------------------------- the shared snapshot


@dataclass(frozen=True)
class TaskFigures:
    """One task over the last day (from rollups: p50/p95 are bucket estimates)."""

    name: str
    completed: int
    failed: int  # failed + timed out
    canceled: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class WorkerFigures:
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    processed: int
    started_at: dt.datetime
    current: int  # runs it holds now


@dataclass(frozen=True)
class Snapshot:
    at: dt.datetime
    counts: list[tuple[str, str, Count]]  # (status, label, count)
    minutes: list[tuple[dt.datetime, int, int]]  # (minute, completed, not completed)
    hours: list[tuple[dt.datetime, int, int]]  # the same per hour, last day
    tasks: list[TaskFigures]
    # (task, queue, status) -> (runs, oldest run_after) for runs claimed, running, stopping
    active: dict[tuple[str, str, str], tuple[int, dt.datetime | None]]
    queues: list[tuple[str, int, dt.datetime | None]]  # (queue, waiting, oldest run_after)
    workers: list[WorkerFigures]  # alive ones
    worker_states: dict[str, int]  # alive / lost / stopped -> workers
    # (task, queue, status) -> Cell since this process first read: what counters export
    finished: dict[rollups.Key, rollups.Cell]
    rolled_until: dt.datetime | None  # finished runs after this are not in the rollups yet
    backfilling: bool  # older rolled periods are still being filled in

    @property
    def failure_rate(self) -> float | None:
        """Of the runs finished in the last hour, the share that did not complete."""
        ok, bad = sum(m[1] for m in self.minutes), sum(m[2] for m in self.minutes)
        return bad / (ok + bad) if ok + bad else None


_lock = threading.Lock()
_cached: tuple[float, Snapshot] | None = None
_finished: dict[rollups.Key, rollups.Cell] = {}
_counted_until: dt.datetime | None = None  # minute rows before this are in _finished


def snapshot() -> Snapshot:
    """The figures, read at most once per SNAPSHOT_INTERVAL in this process, shared by
    every viewer of the dashboard and every metrics scrape (Oban #496: one stats query
    per viewer per second)."""
    global _cached
    with _lock:
        if _cached is None or time.monotonic() - _cached[0] >= SNAPSHOT_INTERVAL:
            _cached = (time.monotonic(), _read())
        return _cached[1]


def reset() -> None:
    """Forget the cached snapshot and the counters (tests)."""
    global _cached, _counted_until
    with _lock:
        _cached, _counted_until = None, None
        _finished.clear()


def _read() -> Snapshot:
    now = timezone.now()
    rolled = rollups.roll(now, ROLL_BUDGET)
    until = rollups.rolled_until()
    open_from = until or rollups.floor(now - dt.timedelta(hours=1), rollups.MINUTE)
    # Runs finished after the rolled minutes: seconds to a few minutes of runs.
    fresh = rollups.cells_of_runs(open_from)
    minute_from = rollups.floor(now, rollups.MINUTE) - dt.timedelta(minutes=60)
    hour_from = rollups.floor(now, rollups.HOUR) - dt.timedelta(hours=23)
    minutes = _bars(rollups.series(rollups.MINUTE, minute_from), fresh, minute_from,
                    rollups.MINUTE, 61)
    rolled_hours = rollups.marked(rollups.HOUR, hour_from)
    # Minute rows only of the hours not rolled yet (the current one, mostly).
    by_minute = rollups.series(rollups.MINUTE, max(rolled_hours) + dt.timedelta(hours=1)
                               if rolled_hours else hour_from)
    hours = _bars(_per_hour(by_minute, rollups.series(rollups.HOUR, hour_from)), fresh,
                  hour_from, rollups.HOUR, 24)
    day = rollups.totals(hour_from)
    for (_, task, queue, status), cell in fresh.items():
        day.setdefault((task, queue, status), rollups.Cell()).add(
            cell.count, cell.retries, cell.duration_sum, cell.buckets)
    return Snapshot(
        at=now,
        counts=[(s.value, s.label, capped_count(store.runs(status=[s.value]))) for s in Status],
        minutes=minutes,
        hours=hours,
        tasks=_tasks(day),
        active=_active(),
        queues=_queues(),
        workers=_workers(now),
        worker_states=_worker_states(now),
        finished=_count_finished(until),
        rolled_until=until,
        backfilling=rolled >= 2,
    )


def _per_hour(by_minute: dict[dt.datetime, dict[str, int]],
              by_hour: dict[dt.datetime, dict[str, int]]) -> dict[dt.datetime, dict[str, int]]:
    """Hours from hour rollups, and hours not rolled yet summed from their minutes."""
    out = {hour: dict(statuses) for hour, statuses in by_hour.items()}
    for minute, statuses in by_minute.items():
        hour = rollups.floor(minute, rollups.HOUR)
        if hour in by_hour:
            continue
        target = out.setdefault(hour, {})
        for status, n in statuses.items():
            target[status] = target.get(status, 0) + n
    return out


def _bars(rolled: dict[dt.datetime, dict[str, int]],
          fresh: dict[tuple[dt.datetime, str, str, str], rollups.Cell], since: dt.datetime,
          span: int, periods: int) -> list[tuple[dt.datetime, int, int]]:
    """(period, completed, other outcomes) for ``periods`` periods from ``since``."""
    bars = {since + dt.timedelta(seconds=span * i): [0, 0] for i in range(periods)}
    counts = [(start, status, n) for start, statuses in rolled.items()
              for status, n in statuses.items()]
    counts += [(rollups.floor(start, span), status, cell.count)
               for (start, _, _, status), cell in fresh.items()]
    for start, status, n in counts:
        if start in bars:
            bars[start][0 if status == Status.COMPLETED else 1] += n
    return [(start, ok, bad) for start, (ok, bad) in sorted(bars.items())]


def _tasks(day: dict[rollups.Key, rollups.Cell]) -> list[TaskFigures]:
    per_task: dict[str, dict[str, rollups.Cell]] = {}
    for (task, _, status), cell in day.items():
        target = per_task.setdefault(task, {}).setdefault(status, rollups.Cell())
        target.add(cell.count, cell.retries, cell.duration_sum, cell.buckets)
    out = []
    for task, cells in per_task.items():
        done = cells.get(Status.COMPLETED, rollups.Cell())
        out.append(TaskFigures(
            task, done.count, sum(cells[s].count for s in FAILED if s in cells),
            cells[Status.CANCELED].count if Status.CANCELED in cells else 0,
            done.percentile(0.5), done.percentile(0.95)))
    return sorted(out, key=lambda t: (-(t.completed + t.failed + t.canceled), t.name))


def _active() -> dict[tuple[str, str, str], tuple[int, dt.datetime | None]]:
    """Runs claimed, running or stopping, grouped: bounded by the workers' concurrency."""
    rows = (store.runs(status=sorted(ACTIVE)).order_by().values("task_name", "queue", "status")
            .annotate(n=Counted("id"), oldest=Min("run_after")))
    return {(r["task_name"], r["queue"], r["status"]): (r["n"], r["oldest"]) for r in rows}


def _queues() -> list[tuple[str, int, dt.datetime | None]]:
    """(queue, waiting runs, oldest run_after) for queues with waiting runs, fullest first:
    read from the claim index alone (``tl_run_claim`` holds queue, run_after and id of
    exactly the waiting runs), never the rows, so a backlog costs its index entries."""
    rows = (store.runs(status=sorted(CLAIMABLE)).order_by().values("queue")
            .annotate(n=Counted("id"), oldest=Min("run_after")))
    return sorted(((r["queue"], r["n"], r["oldest"]) for r in rows), key=lambda q: (-q[1], q[0]))


def _alive_cutoff(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=conf.get("HEARTBEAT_TIMEOUT"))


def _workers(now: dt.datetime) -> list[WorkerFigures]:
    alive = list(Worker.objects.filter(stopped_at__isnull=True,
                                       heartbeat_at__gte=_alive_cutoff(now))[:100])
    held: dict[str, int] = {}
    for worker_id in (store.runs(status=sorted(ACTIVE)).filter(worker_id__in=[w.id for w in alive])
                      .values_list("worker_id", flat=True)):
        held[worker_id] = held.get(worker_id, 0) + 1
    return [WorkerFigures(w.id, w.hostname, w.pid, list(w.queues), w.concurrency, w.processed,
                          w.started_at, held.get(w.id, 0)) for w in alive]


def _worker_states(now: dt.datetime) -> dict[str, int]:
    running = Worker.objects.filter(stopped_at__isnull=True)
    cutoff = _alive_cutoff(now)
    return {"alive": running.filter(heartbeat_at__gte=cutoff).count(),
            "lost": running.filter(heartbeat_at__lt=cutoff).count(),
            "stopped": Worker.objects.filter(stopped_at__isnull=False).count()}


def _count_finished(until: dt.datetime | None) -> dict[rollups.Key, rollups.Cell]:
    """Finished runs counted into this process's totals: seeded with every rolled
    period kept, then each read adds the minutes rolled since (counters only grow)."""
    global _counted_until
    if until is None:
        return dict(_finished)
    if _counted_until is None:
        added = rollups.totals(rollups.floor(timezone.now() - rollups.HOURS_KEPT, rollups.HOUR),
                               minutes_before=until)
    elif until > _counted_until:
        added = rollups.totals(_counted_until, minutes_after=_counted_until, minutes_before=until)
    else:
        added = {}
    for key, cell in added.items():
        _finished.setdefault(key, rollups.Cell()).add(cell.count, cell.retries,
                                                      cell.duration_sum, cell.buckets)
    _counted_until = until
    return {key: _copy(cell) for key, cell in _finished.items()}


def _copy(cell: rollups.Cell) -> rollups.Cell:
    return rollups.Cell(cell.count, cell.retries, cell.duration_sum, list(cell.buckets))
