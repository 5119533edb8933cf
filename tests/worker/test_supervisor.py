"""The supervisor without executor processes: how it finishes the work of an executor
that stopped, and how it finds runs no executor accounts for."""

from __future__ import annotations

import datetime as dt
import time
from types import SimpleNamespace

import pytest
from django.utils import timezone

from django_tasks_live import store
from django_tasks_live.models import Run, Worker
from django_tasks_live.states import Status
from django_tasks_live.worker.pool import Assignment
from django_tasks_live.worker.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)


def claimed(count: int, worker_id: str = "w1", max_attempts: int = 1) -> list[Run]:
    runs = store.create_runs([store.NewRun("noop", max_attempts=max_attempts)
                              for _ in range(count)])
    return [store.claim_run(run.pk, worker_id) for run in runs]


def stopped_executor(head: Run, waiting: list[Run], outcomes: list[store.Outcome]) -> SimpleNamespace:
    """What a Slot hands back when its executor stopped (see Slot.take_back)."""
    return SimpleNamespace(
        take_back=lambda: (Assignment(head.pk, None), [r.pk for r in waiting], outcomes))


def test_what_a_stopped_executor_held_is_written_released_and_requeued():
    done, head, waiting = claimed(3)
    supervisor = Supervisor(worker_id="w1")
    slot = stopped_executor(head, [waiting], [store.Outcome(done.pk, Status.COMPLETED, {"result": 5})])
    supervisor._take_over(slot, lambda run_id: store.release(run_id, "ExecutorDied", "exit -9"))
    done, head, waiting = (Run.objects.get(pk=r.pk) for r in (done, head, waiting))
    assert (done.status, done.result) == (Status.COMPLETED, 5)
    assert (head.status, head.errors[-1]["type"]) == (Status.FAILED, "ExecutorDied")
    assert (waiting.status, waiting.attempt) == (Status.PENDING, 0)


def test_an_outcome_the_executor_wrote_already_is_not_written_twice():
    [run] = claimed(1)
    outcome = store.Outcome(run.pk, Status.COMPLETED, {"result": 1})
    store.settle([outcome], "w1", None, 0)
    supervisor = Supervisor(worker_id="w1")
    supervisor.outcomes = [store.Outcome(run.pk, Status.FAILED, {"error": "late"})]
    supervisor._write_outcomes()
    run.refresh_from_db()
    assert (run.status, run.error) == (Status.COMPLETED, "")
    assert [e.status for e in run.events.order_by("id")] == ["pending", "running", "completed"]


def executor_reporting(known_run_ids) -> SimpleNamespace:
    """A slot whose executor accounts for ``known_run_ids()`` and has nothing unread."""
    return SimpleNamespace(known_run_ids=known_run_ids, wake=lambda: False,
                           conn=SimpleNamespace(poll=lambda: False))


def test_runs_no_executor_accounts_for_are_requeued_at_the_second_check():
    known, orphan = claimed(2)
    supervisor = Supervisor(worker_id="w1")
    supervisor.slots = [executor_reporting(lambda: {known.pk})]
    supervisor._requeue_unaccounted()  # an executor may just be reporting its claim
    assert Run.objects.get(pk=orphan.pk).status == Status.RUNNING
    supervisor._requeue_unaccounted()
    orphan.refresh_from_db()
    assert (orphan.status, orphan.attempt) == (Status.PENDING, 0)
    assert Run.objects.get(pk=known.pk).status == Status.RUNNING


def test_a_run_reported_between_two_checks_stays_claimed():
    [run] = claimed(1)
    reported: set[int] = set()
    supervisor = Supervisor(worker_id="w1")
    supervisor.slots = [executor_reporting(lambda: reported)]
    supervisor._requeue_unaccounted()
    reported.add(run.pk)
    supervisor._requeue_unaccounted()
    supervisor._requeue_unaccounted()
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING


class IdleExecutor:
    """A slot whose executor waits for work; counts the wake-ups it is sent."""

    def __init__(self) -> None:
        self.wakes = 0
        self.starved = False

    def wake(self) -> bool:
        self.wakes += 1
        return True

    def settled(self, claimed: list, wanted: int) -> None:
        self.starved = wanted > 0 and not claimed


def test_one_new_run_wakes_one_executor_and_a_full_claim_wakes_the_next():
    supervisor = Supervisor(worker_id="w1")
    first, second, third = supervisor.slots = [IdleExecutor() for _ in range(3)]
    supervisor._wake_idle(1)  # one notification
    assert [s.wakes for s in supervisor.slots] == [1, 0, 0]
    supervisor._on_message(first, ("settled", [(1, None), (2, None)], 2))  # got all it asked
    assert sum(s.wakes for s in supervisor.slots) == 2
    supervisor._on_message(second, ("settled", [(3, None)], 2))  # fewer: nothing more due
    assert sum(s.wakes for s in supervisor.slots) == 2
    supervisor._on_message(third, ("settled", [], 2))
    assert third.starved


def test_a_draining_worker_wakes_nobody():
    supervisor = Supervisor(worker_id="w1")
    supervisor.slots = [IdleExecutor()]
    supervisor._drain()
    supervisor._wake_idle(None)
    assert supervisor.slots[0].wakes == 0


def test_a_run_claimed_again_between_two_checks_is_a_new_claim():
    # Released by its dead executor and claimed by the new one: not the claim that
    # the first check missed, so the second check leaves it alone.
    [run] = claimed(1, max_attempts=2)
    supervisor = Supervisor(worker_id="w1")
    supervisor.slots = [executor_reporting(set)]
    supervisor._requeue_unaccounted()
    store.release(run.pk, "ExecutorDied", "exit -9")
    store.claim_run(run.pk, "w1")
    supervisor._requeue_unaccounted()
    run.refresh_from_db()
    assert (run.status, run.attempt) == (Status.RUNNING, 2)


def test_after_a_gap_in_its_own_heartbeats_a_worker_waits_before_rescuing_others(settings):
    # Another worker's run, its heartbeat as stale as an outage leaves everybody's.
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "HEARTBEAT_INTERVAL": 1.0,
                           "HEARTBEAT_TIMEOUT": 5.0}
    store.register_worker("w2", "host", 2, [], 1)
    Worker.objects.filter(pk="w2").update(heartbeat_at=timezone.now() - dt.timedelta(seconds=6))
    [run] = claimed(1, worker_id="w2", max_attempts=2)
    store.register_worker("w1", "host", 1, [], 1)
    supervisor = Supervisor(worker_id="w1")

    supervisor._heard_at = time.monotonic() - 3  # its own last heartbeat: 3 intervals ago
    supervisor._housekeeping()
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING  # w2 may be back any moment
    assert supervisor._rescue_after > time.monotonic() + 4

    supervisor._rescue_after = time.monotonic()  # a heartbeat timeout later, w2 still silent
    supervisor._next_heartbeat = 0.0
    supervisor._housekeeping()
    run.refresh_from_db()
    assert (run.status, run.errors[-1]["type"]) == (Status.PENDING, "WorkerLost")


def test_a_worker_in_touch_with_the_database_rescues_at_once(settings):
    supervisor = Supervisor(worker_id="w1")
    assert supervisor._may_rescue()  # the first heartbeat: no gap to judge by
    supervisor._heard_at = time.monotonic() - 0.1
    assert supervisor._may_rescue()
