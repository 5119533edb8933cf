"""Rollups: closed minutes and hours of finished runs, read instead of the runs."""

import datetime as dt

import pytest
from django.utils import timezone

from django_tasks_live import rollups, stats, store
from django_tasks_live.models import Rollup
from django_tasks_live.states import Status
from tests.admin.helpers import make_run

pytestmark = pytest.mark.django_db



def finished(status, at, seconds=1.0, task="noop", queue="default", attempt=1):
    """A run that finished ``at`` after running ``seconds``."""
    run = make_run(status, task=task)
    store.runs().filter(pk=run.pk).update(finished_at=at, started_at=at - dt.timedelta(seconds=seconds),
                                          queue=queue, attempt=attempt)
    return run


def test_closed_minutes_are_rolled_once_with_counts_retries_and_buckets():
    now = timezone.now()
    ten = rollups.floor(now, rollups.MINUTE) - dt.timedelta(minutes=10)
    finished(Status.COMPLETED, ten + dt.timedelta(seconds=5), seconds=0.3)
    finished(Status.COMPLETED, ten + dt.timedelta(seconds=50), seconds=3, attempt=3)
    finished(Status.FAILED, ten + dt.timedelta(minutes=1), queue="q2")
    finished(Status.COMPLETED, now)  # the open minute: not rolled yet

    rolled = rollups.roll(now, budget=60)
    # Every closed minute since the hour BACKFILL ago began (1,440 or a few more or less,
    # by the time of day and the grace for late finishes).
    backfill = rollups.closed_until(now) - rollups.floor(now - rollups.BACKFILL, rollups.HOUR)
    assert rolled == len(rollups.marked(rollups.MINUTE, now - dt.timedelta(days=2))) == (
        backfill // dt.timedelta(minutes=1))
    before = Rollup.objects.count()
    assert rollups.roll(now, budget=60) == 0 and Rollup.objects.count() == before  # once

    cells = rollups.totals(now - dt.timedelta(hours=2))
    done = cells[("noop", "default", "completed")]
    assert (done.count, done.retries, round(done.duration_sum, 3)) == (2, 2, 3.3)
    assert done.buckets[rollups.DURATION_BUCKETS.index(0.5)] == 1  # 0.3 s: the 0.25-0.5 bucket
    assert done.buckets[rollups.DURATION_BUCKETS.index(5.0)] == 1  # 3 s: the 2.5-5 bucket
    assert cells[("noop", "q2", "failed")].count == 1
    series = rollups.series(rollups.MINUTE, ten)
    assert series[ten] == {"completed": 2} and series[ten + dt.timedelta(minutes=1)] == {"failed": 1}
    assert rollups.floor(now, rollups.MINUTE) not in series  # still open


def test_an_hour_is_rolled_from_its_minutes_and_read_instead_of_them():
    now = timezone.now()
    hour = rollups.floor(now, rollups.HOUR) - dt.timedelta(hours=3)
    for i in range(4):
        finished(Status.COMPLETED, hour + dt.timedelta(minutes=15 * i), seconds=i + 0.5)
    rollups.roll(now, budget=60)
    rows = Rollup.objects.filter(span=rollups.HOUR, start=hour).exclude(task_name="")
    assert [(r.status, r.count) for r in rows] == [("completed", 4)]
    assert rollups.series(rollups.HOUR, hour)[hour] == {"completed": 4}
    # totals() reads the hour row, not its minutes: dropping the minutes changes nothing.
    Rollup.objects.filter(span=rollups.MINUTE, start__lt=hour + dt.timedelta(hours=1)).delete()
    assert rollups.totals(hour)[("noop", "default", "completed")].count == 4


def test_rolling_is_bounded_per_call_and_catches_up():
    now = timezone.now()
    finished(Status.COMPLETED, now - dt.timedelta(hours=20))
    first = rollups.roll(now, budget=0)  # one chunk at least, then out of time
    assert 0 < first <= rollups.CHUNK
    while rollups.roll(now, budget=0):
        pass
    assert rollups.totals(now - dt.timedelta(hours=23))[("noop", "default", "completed")].count == 1


def test_percentiles_are_estimated_inside_their_bucket():
    cell = rollups.Cell()
    for duration in [0.2] * 50 + [4.0] * 45 + [20.0] * 5:
        cell.add_run(1, duration)
    assert 0.1 < cell.percentile(0.5) <= 0.25
    assert 2.5 < cell.percentile(0.95) <= 5.0
    assert rollups.Cell().percentile(0.5) is None


def test_snapshot_counts_grow_only_by_newly_rolled_minutes():
    now = timezone.now()
    finished(Status.COMPLETED, now - dt.timedelta(minutes=5))
    first = stats.snapshot().finished[("noop", "default", "completed")].count
    finished(Status.COMPLETED, now - dt.timedelta(minutes=4))  # after its minute was rolled
    finished(Status.COMPLETED, now - dt.timedelta(seconds=1))
    stats._cached = None  # the next interval
    # A late row in a rolled minute is not counted (rollups are final once rolled); the
    # open minute is not counted until it closes.
    assert stats.snapshot().finished[("noop", "default", "completed")].count == first == 1
    tasks = {t.name: t for t in stats.snapshot().tasks}
    assert tasks["noop"].completed == 2  # the last day: rolled minutes plus the open ones


def test_two_processes_rolling_the_same_minutes_count_them_once():
    now = timezone.now()
    finished(Status.COMPLETED, now - dt.timedelta(minutes=3))
    rollups.roll(now, budget=60)
    rows = Rollup.objects.exclude(task_name="").count()
    # The second process read "not rolled" before the first committed: it rolls again.
    Rollup.objects.filter(task_name="").delete()
    rollups.roll(now, budget=60)
    assert Rollup.objects.exclude(task_name="").count() == rows
    assert rollups.totals(now - dt.timedelta(hours=1))[("noop", "default", "completed")].count == 1
