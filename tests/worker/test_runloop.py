"""An executor's loop, driven in this process: what it claims, runs, writes and reports."""

from __future__ import annotations

import multiprocessing
from collections import deque
from typing import Any

import pytest

from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from django_tasks_live.worker.runloop import OUTCOME_DELAY, PIPELINE_SECONDS, RunLoop
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
    assert statuses(runs) == [Status.CLAIMED] * 3
    for _ in runs:
        loop.step()
    # Each run's outcome was reported as it ended; none is written yet.
    assert loop.conn.kinds() == ["settled", "done", "done", "done"]
    assert statuses(runs) == [Status.CLAIMED] * 3
    loop.step()  # idle: writes the outcomes (and finds nothing more to claim)
    assert statuses(runs) == [Status.COMPLETED] * 3
    assert loop.conn.sent[-1][:2] == ("settled", [])  # none due: it waits to be woken
    assert not loop.hungry


def test_a_skipped_run_is_written_with_the_batch_beside_completed_ones():
    runs = store.create_runs([store.NewRun("maybe", kwargs={"item": "x", "verdict": v})
                              for v in ("yes", "stale", "yes")])
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    for _ in range(5):
        loop.step()
    finished = list(store.runs(run_ids=[r.pk for r in runs]).order_by("id"))
    assert [r.status for r in finished] == [Status.COMPLETED, Status.SKIPPED, Status.COMPLETED]
    assert finished[1].progress_message == "Skipped: stale"
    assert finished[1].events.order_by("-id").first().status == Status.SKIPPED


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


def deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("fields,reason", [
    # What a handler cannot produce any more (runner sanitises it), should a value slip
    # through: text UTF-8 cannot encode (SQLite raises UnicodeEncodeError, PostgreSQL a
    # DataError), JSON too deep to encode (RecursionError).
    ({"progress_message": "x\ud800"}, ("UnicodeEncodeError", "invalid input syntax for type json")),
    ({"result": deep(5000)}, ("RecursionError",)),
])
def test_an_outcome_no_database_can_store_fails_only_its_run(fields, reason):
    good, bad = (store.claim_run(run.pk, "w1") for run in start_noops(2))
    loop = run_loop()
    loop.outcomes = [store.Outcome(good.pk, Status.COMPLETED, {"result": 1}),
                     store.Outcome(bad.pk, Status.COMPLETED, fields)]
    loop._settle(0)
    assert loop.outcomes == [] and loop.conn.sent == [("settled", [], 0)]
    good, bad = (Run.objects.get(pk=run.pk) for run in (good, bad))
    assert (good.status, good.result) == (Status.COMPLETED, 1)
    assert (bad.status, bad.error_type) == (Status.FAILED, "OutcomeNotStored")
    assert bad.error.startswith("the run's outcome could not be stored (")
    assert any(word in bad.error for word in reason) and bad.error.endswith("the worker log has the details.")
    assert "\n" not in bad.error and len(bad.error) < 300


@requires_postgres
def test_a_refused_outcome_stores_no_sql_in_the_run():
    run = store.claim_run(start_noops(1)[0].pk, "w1")
    loop = run_loop()
    loop.outcomes = [store.Outcome(run.pk, Status.COMPLETED, {"progress_message": "x\x00"})]
    loop._settle(0)
    error = Run.objects.get(pk=run.pk).error
    assert error.startswith("the run's outcome could not be stored (DataError: ")
    for sql_word in ("UPDATE", "SELECT", "INSERT", "DETAIL", "CONTEXT", "%s"):
        assert sql_word not in error


def test_the_gate_says_which_claim_is_executing():
    runs = start_noops(2)
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.step()  # claims both: claim 1 and 2 of this executor
    loop.step()  # runs the first
    assert int(loop.gate[0]) == 1 and loop.gate[1] > 0
    loop.step()
    assert int(loop.gate[0]) == 2
    assert loop.conn.kinds() == ["settled", "done", "done"]
    assert statuses(runs) == [Status.CLAIMED] * 2  # short runs: no write until the outcome


def test_a_withdrawn_run_is_never_begun():
    runs = start_noops(3)
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.step()  # claims all three
    # The supervisor took the last two back (it sends this while holding the gate's lock).
    loop.conn.inbox.append(("withdraw", [runs[1].pk, runs[2].pk]))
    while loop.queue or loop.outcomes:
        loop.step()
    assert [m[1] for m in loop.conn.sent if m[0] == "done"] == [runs[0].pk]
    assert loop.queue == deque()


def test_outcomes_are_written_before_a_run_of_a_task_not_known_to_be_short():
    quick, slow = store.create_runs([store.NewRun("noop"), store.NewRun("echo")])
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.step()  # claims both
    loop.step()  # runs the noop: its outcome is held
    assert statuses([quick]) == [Status.CLAIMED] and loop.outcomes
    loop.step()  # "echo" never ran here: the noop's outcome is written before it begins
    assert statuses([quick]) == [Status.COMPLETED]
    assert statuses([slow]) == [Status.CLAIMED]  # ended, but its outcome is held
    got = Run.objects.get(pk=quick.pk)
    assert got.started_at is not None and got.started_at <= got.finished_at


def test_outcomes_wait_at_most_outcome_delay_behind_known_short_runs():
    runs = start_noops(3)
    loop = run_loop(avg_run_seconds=PIPELINE_SECONDS / 10)
    loop.task_seconds["noop"] = 0.0001  # known to be short
    loop.step()
    loop.step()  # the first ends; its outcome is held
    assert statuses(runs)[0] == Status.CLAIMED
    loop._outcomes_since -= OUTCOME_DELAY  # it has waited long enough
    loop.step()
    assert statuses(runs)[0] == Status.COMPLETED

