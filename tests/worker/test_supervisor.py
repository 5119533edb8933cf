"""The supervisor without executor processes: how it finishes the work of an executor
that stopped, and how it finds runs no executor accounts for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from django_tasks_live.worker.pool import Assignment
from django_tasks_live.worker.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)


def claimed(count: int, worker_id: str = "w1") -> list[Run]:
    runs = store.create_runs([store.NewRun("noop") for _ in range(count)])
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


def test_runs_no_executor_accounts_for_are_requeued_at_the_second_check():
    known, orphan = claimed(2)
    supervisor = Supervisor(worker_id="w1")
    supervisor.slots = [SimpleNamespace(known_run_ids=lambda: {known.pk}, wake=lambda: None)]
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
    supervisor.slots = [SimpleNamespace(known_run_ids=lambda: reported, wake=lambda: None)]
    supervisor._requeue_unaccounted()
    reported.add(run.pk)
    supervisor._requeue_unaccounted()
    supervisor._requeue_unaccounted()
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING
