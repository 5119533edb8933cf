"""Runs finished per minute and per hour, per task, queue and final status, pre-aggregated.

The dashboard and the metrics endpoint must not read runs in proportion to how many
there are. Once a minute has closed (``GRACE`` seconds after its end, so a slow commit
or a small clock difference between hosts still lands in it), its finished runs are
read once through the ``tl_run_finished`` index and written as :class:`Rollup` rows,
plus a marker row (empty task name) that says the minute is rolled, zero runs or not.
An hour is rolled from its 60 minute rows once they all are.

Whoever reads figures first rolls (``stats.snapshot``: one read per web process per
interval), newest minutes first and then older ones for at most a time budget per read,
so a first visit catches up on the last ``BACKFILL`` over a few reads. Two processes
rolling the same minute write the same rows; the unique constraint keeps one
(``ignore_conflicts``). Runs deleted by retention
later stay counted here.
"""

from __future__ import annotations

import bisect
import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import router, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from . import store
from .models import Rollup
from .states import TERMINAL

MINUTE, HOUR = 60, 3600
# Upper bounds of the duration buckets in seconds (a last bucket holds the rest: +Inf).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0, 900.0, 1800.0, 3600.0)
GRACE = dt.timedelta(seconds=30)
BACKFILL = dt.timedelta(hours=24)  # how far back a first roll reaches
MINUTES_KEPT = BACKFILL + dt.timedelta(hours=2)  # older minute rows would be rolled again
HOURS_KEPT = dt.timedelta(days=8)
CHUNK = 2  # minutes read per query while rolling (the first chunk is always read)
QUIET_RUNS = 500  # a chunk with fewer runs doubles the next one (up to an hour)
Key = tuple[str, str, str]  # (task, queue, status)


@dataclass
class Cell:
    """Finished runs of one (task, queue, status) over some periods."""

    count: int = 0
    retries: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def add_run(self, attempt: int, duration: float | None) -> None:
        self.count += 1
        self.retries += max(0, attempt - 1)
        if duration is not None:
            self.duration_sum += duration
            self.buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1

    def add(self, count: int, retries: int, duration_sum: float, buckets: Iterable[int]) -> None:
        self.count += count
        self.retries += retries
        self.duration_sum += duration_sum
        for i, n in enumerate(buckets):
            if i < len(self.buckets):
                self.buckets[i] += n

    def percentile(self, fraction: float) -> float | None:
        """The duration below which ``fraction`` of the timed runs fall, interpolated
        inside its bucket (an estimate: the buckets are what is kept)."""
        timed = sum(self.buckets)
        if not timed:
            return None
        rank, seen = fraction * timed, 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                low = DURATION_BUCKETS[i - 1] if i else 0.0
                high = DURATION_BUCKETS[i] if i < len(DURATION_BUCKETS) else low * 2
                return low + (high - low) * max(0.0, rank - seen) / n
            seen += n
        return DURATION_BUCKETS[-1]


def floor(moment: dt.datetime, span: int) -> dt.datetime:
    """The start of the minute (span 60) or hour (3600) that ``moment`` falls in."""
    if moment.utcoffset():  # the database's values are UTC already: skip the conversion
        moment = moment.astimezone(dt.UTC)
    return moment.replace(second=0, microsecond=0) if span == MINUTE else moment.replace(
        minute=0, second=0, microsecond=0)


def closed_until(now: dt.datetime | None = None) -> dt.datetime:
    """Minutes that start before this are closed: no run will still finish in them."""
    return floor((now or timezone.now()) - GRACE, MINUTE)


def cells_of_runs(since: dt.datetime, until: dt.datetime | None = None,
                  span: int = MINUTE) -> dict[tuple[dt.datetime, str, str, str], Cell]:
    """(period start, task, queue, status) -> Cell for runs finished in [since, until),
    read from the ``tl_run_finished`` index (used for closed minutes, once, and for the
    open minutes the rollups do not hold yet)."""
    runs = store.runs().order_by().filter(finished_at__gte=since, status__in=sorted(TERMINAL))
    if until is not None:
        runs = runs.filter(finished_at__lt=until)
    out: dict[tuple[dt.datetime, str, str, str], Cell] = {}
    rows = runs.values_list("finished_at", "task_name", "queue", "status", "started_at", "attempt")
    for finished, task, queue, status, started, attempt in rows.iterator(chunk_size=2000):
        cell = out.setdefault((floor(finished, span), task, queue, status), Cell())
        cell.add_run(attempt, (finished - started).total_seconds() if started else None)
    return out


def _rows(span: int, cells: dict[tuple[dt.datetime, str, str, str], Cell],
          marked: Iterable[dt.datetime]) -> list[Rollup]:
    rows = [Rollup(span=span, start=start, task_name=task, queue=queue, status=status,
                   count=c.count, retries=c.retries, duration_sum=c.duration_sum,
                   buckets=c.buckets) for (start, task, queue, status), c in cells.items()]
    return rows + [Rollup(span=span, start=start, buckets=[]) for start in marked]


def marked(span: int, since: dt.datetime) -> set[dt.datetime]:
    """Starts of the rolled periods from ``since`` on."""
    return {start.astimezone(dt.UTC) for start in Rollup.objects.filter(
        span=span, task_name="", start__gte=since).values_list("start", flat=True)}


def roll(now: dt.datetime | None = None, budget: float = 0.5) -> int:
    """Roll the closed minutes not rolled yet (newest first, so the runs read live
    stay a minute's worth; older ones for at most ``budget`` seconds), then the hours
    whose minutes all are, then drop old rows. Returns the number of minutes rolled."""
    now = now or timezone.now()
    until = closed_until(now)
    start = floor(now - BACKFILL, HOUR)
    done = marked(MINUTE, start)
    todo = [m for m in reversed(_periods(start, until, MINUTE)) if m not in done]
    deadline = time.monotonic() + budget
    rolled = 0
    size = CHUNK
    while todo:  # at least one chunk per call, so rolling always moves on
        chunk = _contiguous(todo[:size])
        todo = todo[len(chunk):]
        cells = cells_of_runs(chunk[-1], chunk[0] + dt.timedelta(minutes=1))
        # Quiet minutes (an idle night, a new site) are rolled an hour at a time.
        size = min(size * 2, 60) if sum(c.count for c in cells.values()) < QUIET_RUNS else CHUNK
        with transaction.atomic(using=router.db_for_write(Rollup)):
            Rollup.objects.bulk_create(_rows(MINUTE, cells, chunk), ignore_conflicts=True)
        rolled += len(chunk)
        done.update(chunk)
        if time.monotonic() >= deadline:
            break
    _roll_hours(start, floor(until, HOUR), done)
    _prune(now)
    return rolled


def _periods(start: dt.datetime, until: dt.datetime, span: int) -> list[dt.datetime]:
    count = int((until - start).total_seconds() // span)
    return [start + dt.timedelta(seconds=span * i) for i in range(max(0, count))]


def _contiguous(minutes: list[dt.datetime]) -> list[dt.datetime]:
    """The leading run of consecutive minutes, newest first (one range query covers them)."""
    end = 1
    while end < len(minutes) and minutes[end - 1] - minutes[end] == dt.timedelta(minutes=1):
        end += 1
    return minutes[:end]


def _roll_hours(start: dt.datetime, until: dt.datetime, minutes_done: set[dt.datetime]) -> None:
    hours_done = marked(HOUR, start)
    for hour in _periods(start, until, HOUR):
        minutes = _periods(hour, hour + dt.timedelta(hours=1), MINUTE)
        if hour in hours_done or not all(m in minutes_done for m in minutes):
            continue
        cells: dict[tuple[dt.datetime, str, str, str], Cell] = {}
        for row in Rollup.objects.filter(span=MINUTE, start__gte=hour, start__lt=minutes[-1]
                                         + dt.timedelta(minutes=1)).exclude(task_name=""):
            cells.setdefault((hour, row.task_name, row.queue, row.status), Cell()).add(
                row.count, row.retries, row.duration_sum, row.buckets)
        with transaction.atomic(using=router.db_for_write(Rollup)):
            Rollup.objects.bulk_create(_rows(HOUR, cells, [hour]), ignore_conflicts=True)


def _prune(now: dt.datetime) -> None:
    Rollup.objects.filter(span=MINUTE, start__lt=now - MINUTES_KEPT).delete()
    Rollup.objects.filter(span=HOUR, start__lt=now - HOURS_KEPT).delete()


# ---------------------------------------------------------------- reading


def series(span: int, since: dt.datetime) -> dict[dt.datetime, dict[str, int]]:
    """Period start -> status -> runs finished, from the rolled periods since ``since``
    (one grouped read of at most periods x statuses rows)."""
    out: dict[dt.datetime, dict[str, int]] = {}
    rows = (Rollup.objects.filter(span=span, start__gte=since).exclude(task_name="")
            .values("start", "status").annotate(n=Sum("count")).order_by())
    for row in rows:
        out.setdefault(row["start"].astimezone(dt.UTC), {})[row["status"]] = row["n"]
    return out


def rolled_until() -> dt.datetime | None:
    """The end of the newest rolled minute (runs finished after it are not in rollups)."""
    newest = Rollup.objects.filter(span=MINUTE, task_name="").aggregate(m=Max("start"))["m"]
    return newest.astimezone(dt.UTC) + dt.timedelta(minutes=1) if newest else None


def totals(since: dt.datetime, minutes_after: dt.datetime | None = None,
           minutes_before: dt.datetime | None = None) -> dict[Key, Cell]:
    """(task, queue, status) -> Cell over the rolled hours from ``since`` on plus the
    rolled minutes after them; or, with ``minutes_after``, over the rolled minutes from
    then on only. ``minutes_before`` bounds the minutes. Reads hours x combinations rows,
    never runs."""
    if minutes_after is None:
        hours = marked(HOUR, since)
        first_minute = max(hours) + dt.timedelta(hours=1) if hours else since
    else:
        first_minute = minutes_after
    minutes = Rollup.objects.filter(span=MINUTE, start__gte=first_minute)
    if minutes_before is not None:
        minutes = minutes.filter(start__lt=minutes_before)
    queries = [minutes]
    if minutes_after is None:
        queries.append(Rollup.objects.filter(span=HOUR, start__gte=since, start__lt=first_minute))
    out: dict[Key, Cell] = {}
    for query in queries:
        rows = query.exclude(task_name="").values_list(
            "task_name", "queue", "status", "count", "retries", "duration_sum", "buckets")
        for task, queue, status, count, retries, duration_sum, buckets in rows:
            out.setdefault((task, queue, status), Cell()).add(count, retries, duration_sum, buckets)
    return out
