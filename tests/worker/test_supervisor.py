"""How much the supervisor claims at once (no processes: the sizing logic alone)."""

from collections import deque
from types import SimpleNamespace

import pytest

from django_tasks_live.worker.supervisor import PIPELINE_SECONDS, Supervisor


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
