"""The supervisor without executor processes: how much it claims at once, and how it
writes outcomes the database refuses."""

from collections import deque
from types import SimpleNamespace

import pytest

from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from django_tasks_live.worker.supervisor import PIPELINE_SECONDS, Supervisor
from tests.support.db import requires_postgres


def supervisor_with(concurrency: int, avg_run_seconds: float) -> Supervisor:
    supervisor = Supervisor(concurrency=concurrency)
    # Idle executors: nothing queued on any of them.
    supervisor.slots = [SimpleNamespace(queue=deque()) for _ in range(concurrency)]
    supervisor.avg_run_seconds = avg_run_seconds
    return supervisor


def test_long_runs_are_not_hoarded():
    supervisor = supervisor_with(concurrency=4, avg_run_seconds=10 * PIPELINE_SECONDS)
    assert supervisor._depth() == 1  # the run executing, nothing queued behind it
    assert supervisor._claim_limit() == 4


def test_short_runs_are_claimed_in_batches(settings):
    settings.TASKS_LIVE = {"PREFETCH": 16, "CLAIM_BATCH": 50}
    supervisor = supervisor_with(concurrency=2, avg_run_seconds=PIPELINE_SECONDS / 100)
    assert supervisor._depth() == 17
    assert supervisor._claim_limit() == 34
    # With more than half of that still queued, it waits for a batch's worth of room.
    supervisor.slots[0].queue.extend(range(18))
    supervisor._wake = True
    assert supervisor._claim_limit() == 0


@pytest.mark.parametrize("concurrency", [16, 64])
def test_a_wide_worker_keeps_claiming_when_its_room_exceeds_one_claim(settings, concurrency):
    # concurrency x depth / 2 is more than CLAIM_BATCH: waiting for that much room
    # would never end, since no claim can fill more than CLAIM_BATCH of it.
    settings.TASKS_LIVE = {"PREFETCH": 16, "CLAIM_BATCH": 50}
    supervisor = supervisor_with(concurrency=concurrency, avg_run_seconds=PIPELINE_SECONDS / 100)
    supervisor.buffer.extend(range(concurrency * 17 - 50))  # room for exactly one claim
    assert supervisor._claim_limit() == 50


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_an_outcome_the_database_refuses_fails_its_run_and_the_rest_are_written():
    # PostgreSQL refuses a NUL character: retrying the batch would fail forever.
    good, bad = (store.claim_run(store.create_runs([store.NewRun("noop")])[0].pk, "w1")
                 for _ in range(2))
    supervisor = Supervisor(worker_id="w1")
    supervisor.outcomes = [
        store.Outcome(good.pk, Status.COMPLETED, {"result": 1}),
        store.Outcome(bad.pk, Status.COMPLETED, {"progress_message": "x\x00"}),
    ]
    supervisor._settle()
    assert supervisor.outcomes == []
    good, bad = (Run.objects.get(pk=run.pk) for run in (good, bad))
    assert (good.status, good.result) == (Status.COMPLETED, 1)
    assert (bad.status, bad.error_type) == (Status.FAILED, "OutcomeNotStored")
    assert "could not be stored" in bad.error
