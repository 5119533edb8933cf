"""Retention that applies itself (retention.py), its lease, and lost / old worker rows
(integration tier: the real database, SQLite or PostgreSQL)."""

import datetime as dt
import threading

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from django_tasks_live import retention, store
from django_tasks_live.models import Lease, Run, RunEvent, Worker
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


def finished_runs(task: str, count: int) -> list[int]:
    runs = store.create_runs([store.NewRun(task_name=task) for _ in range(count)])
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(status=Status.COMPLETED,
                                                           finished_at=timezone.now())
    return [r.pk for r in runs]


def expire_lease() -> None:
    Lease.objects.filter(pk=retention.LEASE).update(until=timezone.now() - dt.timedelta(seconds=1))


def worker(worker_id: str, heartbeat_days_ago: float = 0.0, stopped_days_ago: float | None = None) -> None:
    store.register_worker(worker_id, "host", 1, [], 1)
    now = timezone.now()
    Worker.objects.filter(pk=worker_id).update(
        heartbeat_at=now - dt.timedelta(days=heartbeat_days_ago),
        stopped_at=None if stopped_days_ago is None else now - dt.timedelta(days=stopped_days_ago))


# ---------------------------------------------------------------- the lease


def test_one_holder_at_a_time_until_the_lease_expires():
    assert store.take_lease("job", "w1", 60)
    assert not store.take_lease("job", "w2", 60)
    assert not store.take_lease("job", "w1", 60)  # not even its holder: at most once per interval
    Lease.objects.filter(pk="job").update(until=timezone.now() - dt.timedelta(seconds=1))
    assert store.take_lease("job", "w2", 60)
    lease = Lease.objects.get(pk="job")
    assert lease.holder == "w2" and lease.until > timezone.now() + dt.timedelta(seconds=50)
    assert store.take_lease("other-job", "w1", 60)  # leases are per name


@pytest.mark.django_db(transaction=True)
def test_of_many_workers_asking_at_once_exactly_one_gets_the_lease():
    barrier = threading.Barrier(6)
    won = []

    def ask(name):
        try:
            barrier.wait()
            if store.take_lease("race", name, 60):
                won.append(name)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ask, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and Lease.objects.get(pk="race").holder == won[0]


# ---------------------------------------------------------------- a round


@override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": 2, "RETENTION_BATCH_SIZE": 3,
                               "RETENTION_MAX_BATCHES": 2})
def test_a_round_prunes_at_a_bounded_pace_and_the_next_round_goes_on():
    ids = finished_runs("a", 12)
    kept = finished_runs("b", 2)
    assert retention.prune_once("w1") == {"runs": 6, "events": 6, "workers": 0}
    assert Run.objects.count() == 8  # two batches of three, not all ten at once
    assert retention.prune_once("w2") is None  # the interval has not passed: nobody prunes
    expire_lease()
    assert retention.prune_once("w2") == {"runs": 4, "events": 4, "workers": 0}
    assert set(Run.objects.values_list("id", flat=True)) == {*ids[-2:], *kept}
    expire_lease()
    assert retention.prune_once("w1") == {"runs": 0, "events": 0, "workers": 0}
    assert RunEvent.objects.count() == 4


@override_settings(TASKS_LIVE={"RETENTION_DAYS": 10})
def test_days_apply_and_unfinished_runs_stay():
    old, recent = finished_runs("a", 2)
    Run.objects.filter(pk=old).update(finished_at=timezone.now() - dt.timedelta(days=11))
    running = store.create_runs([store.NewRun(task_name="a")])[0]
    Run.objects.filter(pk=running.pk).update(created_at=timezone.now() - dt.timedelta(days=30))
    assert retention.prune_once("w1")["runs"] == 1
    assert set(Run.objects.values_list("id", flat=True)) == {recent, running.pk}


def test_without_run_retention_only_old_worker_rows_go():
    finished_runs("a", 3)
    worker("alive")
    worker("stopped-long-ago", heartbeat_days_ago=9, stopped_days_ago=9)
    worker("stopped-lately", heartbeat_days_ago=1, stopped_days_ago=1)
    worker("lost-long-ago", heartbeat_days_ago=8)
    worker("lost-lately", heartbeat_days_ago=2)
    assert retention.prune_once("w1") == {"runs": 0, "events": 0, "workers": 2}
    assert set(Worker.objects.values_list("id", flat=True)) == {"alive", "stopped-lately", "lost-lately"}
    assert Run.objects.count() == 3


@override_settings(TASKS_LIVE={"WORKER_RETENTION_DAYS": None})
def test_worker_rows_can_be_kept_forever():
    worker("stopped-long-ago", heartbeat_days_ago=900, stopped_days_ago=900)
    assert retention.prune_once("w1") == {"runs": 0, "events": 0, "workers": 0}
    assert Worker.objects.filter(pk="stopped-long-ago").exists()


# ---------------------------------------------------------------- in the background


@pytest.mark.django_db(transaction=True)
@override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": 1, "RETENTION_INTERVAL": 3600})
def test_tick_runs_a_round_in_a_thread_at_most_once_per_interval(monkeypatch):
    monkeypatch.setattr(retention, "_next_at", 0.0)
    finished_runs("a", 3)
    thread = retention.tick("w1")
    assert thread is not None and thread.name == "tasks-live-retention"
    thread.join(10)
    assert Run.objects.count() == 1
    finished_runs("a", 3)
    assert retention.tick("w1") is None  # this process already did its round this interval
    assert Run.objects.count() == 4


# ---------------------------------------------------------------- lost workers


def test_recovery_marks_the_worker_lost_and_a_heartbeat_revives_it():
    worker("gone")
    worker("here")
    run = store.create_runs([store.NewRun(task_name="noop", max_attempts=2)])[0]
    store.claim_run(run.pk, "gone")
    Worker.objects.filter(pk="gone").update(heartbeat_at=timezone.now() - dt.timedelta(seconds=60))
    rescued = store.recover_lost_runs(30)
    assert [r.pk for r in rescued] == [run.pk]
    gone, here = Worker.objects.get(pk="gone"), Worker.objects.get(pk="here")
    assert gone.lost_at is not None and here.lost_at is None
    lost_at = gone.lost_at
    store.recover_lost_runs(30)
    assert Worker.objects.get(pk="gone").lost_at == lost_at  # marked once
    store.heartbeat("gone", 0)
    assert Worker.objects.get(pk="gone").lost_at is None
    Worker.objects.filter(pk="here").update(lost_at=timezone.now())
    store.register_worker("here", "host", 2, [], 1)
    assert Worker.objects.get(pk="here").lost_at is None


def test_a_stopped_worker_is_not_marked_lost():
    worker("done", heartbeat_days_ago=1, stopped_days_ago=1)
    assert store.mark_lost_workers(30) == 0
    assert Worker.objects.get(pk="done").lost_at is None
