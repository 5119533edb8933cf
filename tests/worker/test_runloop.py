"""An executor's loop, driven in this process: what it claims, runs, writes and reports."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from django_tasks_live.worker.runloop import PIPELINE_SECONDS, RunLoop
from tests.support.db import requires_postgres

pytestmark = pytest.mark.django_db(transaction=True)


class Supervisor:
    """The supervisor's end of the pipe: records what the loop reports."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.inbox: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def poll(self, timeout: float = 0) -> bool:
        return bool(self.inbox)

    def recv(self) -> Any:
        return self.inbox.pop(0)

    def kinds(self) -> list[str]:
        return [message[0] for message in self.sent]


def run_loop(max_tasks: int | None = None, avg_run_seconds: float = PIPELINE_SECONDS,
             worker_id: str = "w1") -> RunLoop:
    store.register_worker(worker_id, "host", 1, [], 1)
    loop = RunLoop(Supervisor(), worker_id, None, multiprocessing.Value("b", 0, lock=False),
                   multiprocessing.Value("q", -1 if max_tasks is None else max_tasks), "default")
    loop.hungry = True  # as after the supervisor's first wake-up
    loop.avg_run_seconds = avg_run_seconds
    return loop


def start_noops(count: int) -> list[Run]:
    return store.create_runs([store.NewRun("noop", kwargs={"n": i}) for i in range(count)])


def statuses(runs: list[Run]) -> list[str]:
    return [r.status for r in store.runs(run_ids=[r.pk for r in runs]).order_by("id")]


def test_long_runs_are_not_hoarded():
    loop = run_loop(avg_run_seconds=10 * PIPELINE_SECONDS)
    assert loop._claim_limit() == 1  # the run to execute, nothing queued behind it


def test_short_runs_are_claimed_in_batches_of_at_most_claim_batch(settings):
    settings.TASKS_LIVE = {"PREFETCH": 16, "CLAIM_BATCH": 50}
    assert run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)._claim_limit() == 11
    assert run_loop(avg_run_seconds=PIPELINE_SECONDS / 100)._claim_limit() == 17
    settings.TASKS_LIVE = {"PREFETCH": 100, "CLAIM_BATCH": 50}
    assert run_loop(avg_run_seconds=PIPELINE_SECONDS / 1000)._claim_limit() == 50


def test_claims_runs_executes_them_and_writes_outcomes_with_the_next_claim():
    runs = start_noops(3)
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.step()  # claims all three in one transaction
    assert [run_id for run_id, _ in loop.conn.sent[0][1]] == [r.pk for r in runs]
    assert statuses(runs) == [Status.RUNNING] * 3
    for _ in runs:
        loop.step()
    # Each run's outcome was reported as it ended; none is written yet.
    assert loop.conn.kinds() == ["settled", "done", "done", "done"]
    assert statuses(runs) == [Status.RUNNING] * 3
    loop.step()  # idle: writes the outcomes (and finds nothing more to claim)
    assert statuses(runs) == [Status.COMPLETED] * 3
    assert loop.conn.sent[-1][:2] == ("settled", [])  # none due: it waits to be woken
    assert not loop.hungry


def test_a_wake_up_makes_an_idle_loop_claim_again():
    loop = run_loop()
    loop.step()
    assert loop.conn.sent[-1][:2] == ("settled", []) and not loop.hungry
    [run] = start_noops(1)
    loop.conn.inbox.append("wake")
    loop.step()  # reads the wake-up, then claims
    loop.step()
    assert loop.conn.kinds()[-2:] == ["settled", "done"]
    assert loop.conn.sent[-2][1] == [(run.pk, None)]


def test_max_tasks_is_shared_by_the_executors_claims():
    runs = start_noops(5)
    first = run_loop(max_tasks=3)
    # A second executor of the same worker: the same drain flag and --max-tasks counter.
    second = RunLoop(Supervisor(), "w1", None, first.stop_flag, first.claims_left, "default")
    first._settle(2)
    second._settle(2)
    assert (len(first.queue), len(second.queue)) == (2, 1)
    assert first.claims_left.value == 0
    assert statuses(runs).count(Status.PENDING) == 2


def test_draining_gives_back_the_runs_not_begun():
    runs = start_noops(3)
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.step()
    loop.step()  # the first run ends
    loop.stop_flag.value = 1
    loop.step()  # the other two go back to pending, unattempted; the outcome is written
    assert loop.conn.sent[-2:] == [("requeued", [runs[1].pk, runs[2].pk]), ("settled", [], 0)]
    assert statuses(runs) == [Status.COMPLETED, Status.PENDING, Status.PENDING]
    assert [r.attempt for r in store.runs(run_ids=[runs[1].pk, runs[2].pk])] == [0, 0]


def test_a_stop_message_ends_the_loop_after_writing_its_outcomes():
    [run] = start_noops(1)
    loop = run_loop()
    loop.step()
    loop.step()
    loop.conn.inbox.append(None)
    loop.run()
    assert loop.stopped
    assert statuses([run]) == [Status.COMPLETED]


@requires_postgres
def test_an_outcome_the_database_refuses_fails_its_run_and_the_rest_are_written():
    # PostgreSQL refuses a NUL character: retrying the batch would fail forever.
    good, bad = (store.claim_run(run.pk, "w1") for run in start_noops(2))
    loop = run_loop()
    loop.outcomes = [
        store.Outcome(good.pk, Status.COMPLETED, {"result": 1}),
        store.Outcome(bad.pk, Status.COMPLETED, {"progress_message": "x\x00"}),
    ]
    loop._settle(0)
    assert loop.outcomes == []
    assert loop.conn.sent == [("settled", [], 0)]
    good, bad = (Run.objects.get(pk=run.pk) for run in (good, bad))
    assert (good.status, good.result) == (Status.COMPLETED, 1)
    assert (bad.status, bad.error_type) == (Status.FAILED, "OutcomeNotStored")
    assert "could not be stored" in bad.error
