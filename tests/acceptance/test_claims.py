"""Runs claimed ahead by a real ``tasks_worker``: what they show, and that losing the
worker, a long run ahead of them, a cancel or a shutdown never costs them an attempt,
their results or their turn."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from tests.conftest import read_calls
from tests.support.processes import children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]
FAST_RESCUE = {"TASKS_LIVE_HEARTBEAT_TIMEOUT": "3"}
# Runs claimed ahead stay claimed behind a long run (nothing taken back after 0.1 s).
HOARDING = {"TASKS_LIVE_SHORT_RUN_WINDOW": "60"}


def statuses(runs: list[Run]) -> dict[int, str]:
    return store.statuses([run.pk for run in runs])


def count(runs: list[Run], status: Status) -> int:
    return list(statuses(runs).values()).count(status)


def train(fast_runs: int = 300) -> None:
    """Fast runs first, so the worker's executors claim many runs at a time."""
    warm = tasks_live.start_many([("echo", {})] * fast_runs)
    wait_until(lambda: count(warm, Status.COMPLETED) == len(warm), 60, "warm-up runs")


def test_runs_claimed_ahead_by_a_killed_worker_cost_no_attempt(tmp_path, _calls_dir):
    runs = tasks_live.start_many([("reports", {"seconds": 2.0})] * 6)  # retries=0
    with children(tmp_path) as spawn:
        doomed = spawn(worker_args("--worker-id", "doomed", "--concurrency", "2"), **HOARDING)
        # Each executor claims two: it begins one (which reports: running), one waits.
        wait_until(lambda: count(runs, Status.RUNNING) == 2 and count(runs, Status.CLAIMED) == 2,
                   30, "two running, two claimed ahead")
        claimed = [r for r in store.runs(run_ids=[r.pk for r in runs]) if r.status == Status.CLAIMED]
        assert {r.worker_id for r in claimed} == {"doomed"}  # the truth: who holds them
        begun = {int(call.split(":")[0]) for call in read_calls(_calls_dir, "reports")}
        assert len(begun) == 2 and not begun & {r.pk for r in claimed}
        os.killpg(doomed.pid, signal.SIGKILL)
        rescuer = spawn(worker_args("--worker-id", "rescuer", "--concurrency", "2"), **FAST_RESCUE)
        for run in runs:
            tasks_live.wait(run.pk, timeout=60)
        rescuer.stop()
    done = {r.pk: r for r in store.runs(run_ids=[r.pk for r in runs])}
    for run_id in begun:  # its handler began: the loss was its one attempt
        assert (done[run_id].status, done[run_id].error, done[run_id].attempt) == (
            Status.FAILED, "worker lost", 1)
    for run in claimed:  # never began: back to pending at the rescue, then run once
        got = done[run.pk]
        assert (got.status, got.attempt, got.claims_lost) == (Status.COMPLETED, 1, 1)
        assert [(e["type"], e["counted"]) for e in got.errors] == [("WorkerLost", False)]
    calls = Counter(int(call.split(":")[0]) for call in read_calls(_calls_dir, "reports"))
    assert calls == dict.fromkeys([r.pk for r in runs], 1)  # no handler ran twice or not at all


def test_a_long_run_holds_back_neither_results_nor_the_runs_behind_it(tmp_path, _calls_dir):
    with children(tmp_path) as spawn:
        holder = spawn(worker_args("--worker-id", "holder", "--concurrency", "1"))
        train()
        # One claim takes all of these: a quick run, a long one, quick ones behind it.
        first, long, *behind = tasks_live.start_many(
            [("noop", {"n": -1}), ("reports", {"seconds": 30.0})]
            + [("noop", {"n": i}) for i in range(20)])
        wait_until(lambda: store.statuses([long.pk])[long.pk] == Status.RUNNING, 30, "long run")
        # The quick run's result was written before the long run began ...
        quick = Run.objects.get(pk=first.pk)
        assert quick.status == Status.COMPLETED
        assert quick.finished_at <= Run.objects.get(pk=long.pk).started_at
        # ... and the runs claimed behind the long one were given back, attempts intact.
        wait_until(lambda: count(behind, Status.PENDING) == len(behind), 10, "given back")
        assert {r.attempt for r in store.runs(run_ids=[r.pk for r in behind])} == {0}
        helper = spawn(worker_args("--worker-id", "helper", "--concurrency", "1"), **FAST_RESCUE)
        wait_until(lambda: count(behind, Status.COMPLETED) == len(behind), 30, "runs behind it")
        assert store.statuses([long.pk])[long.pk] == Status.RUNNING  # still going: no waiting
        os.killpg(holder.pid, signal.SIGKILL)
        lost = tasks_live.wait(long.pk, timeout=30)
        helper.stop()
    assert (lost.status, lost.error) == (Status.FAILED, "worker lost")
    assert Run.objects.get(pk=first.pk).result == -1  # a returned result survives the kill
    assert {r.worker_ids[-1] for r in store.runs(run_ids=[r.pk for r in behind])} == {"helper"}
    calls = Counter(read_calls(_calls_dir, "noop"))
    assert [calls[str(n)] for n in range(-1, 20)] == [1] * 21


def test_canceling_a_claimed_run_ends_it_without_running_its_handler(tmp_path, _calls_dir):
    long, target = tasks_live.start_many([("reports", {"seconds": 3.0}), ("noop", {"n": 999})])
    with children(tmp_path) as spawn:
        spawn(worker_args("--concurrency", "1"), **HOARDING)
        wait_until(lambda: statuses([long, target]) == {long.pk: Status.RUNNING,
                                                        target.pk: Status.CLAIMED},
                   30, "one running, one claimed behind it")
        assert tasks_live.cancel(target).status == Status.CANCEL_REQUESTED
        canceled = tasks_live.wait(target.pk, timeout=10)
        assert store.statuses([long.pk])[long.pk] == Status.RUNNING  # not waited for
        assert tasks_live.wait(long.pk, timeout=30).status == Status.COMPLETED
    assert (canceled.status, canceled.progress_message) == (Status.CANCELED,
                                                            "canceled before it started")
    assert canceled.attempt == 0 and canceled.started_at is None
    assert "999" not in read_calls(_calls_dir, "noop")


@pytest.mark.parametrize("heartbeat", ["0.5", "5"])
def test_an_unheeded_cancel_and_a_time_limit_kill_on_time_whatever_the_heartbeat(tmp_path, heartbeat):
    grace = 1.0  # KILL_GRACE of the test settings
    ignores = tasks_live.start("sleepy", seconds=60, cooperative=False)
    hang = tasks_live.start("hang")  # timeout=1, never checks
    with children(tmp_path) as spawn:
        spawn(worker_args("--concurrency", "2"), TASKS_LIVE_HEARTBEAT=heartbeat)
        wait_until(lambda: statuses([ignores, hang]) == {ignores.pk: Status.RUNNING,
                                                         hang.pk: Status.RUNNING}, 30, "both run")
        tasks_live.cancel(ignores)
        canceled = tasks_live.wait(ignores.pk, timeout=30)
        timed_out = tasks_live.wait(hang.pk, timeout=30)
    assert canceled.status == Status.CANCELED and "killed" in canceled.error
    waited = (canceled.finished_at - canceled.cancel_requested_at).total_seconds()
    assert grace <= waited <= grace + 0.5, waited
    assert timed_out.status == Status.TIMED_OUT
    ran = (timed_out.finished_at - timed_out.started_at).total_seconds()
    assert 1 + grace <= ran <= 1 + grace + 0.5, ran


def test_sigterm_under_load_loses_nothing_and_exits_0(tmp_path, _calls_dir):
    runs = tasks_live.start_many(
        [("noop", {"n": i}) for i in range(500)]
        + [("sleepy", {"seconds": 30.0})] * 4
        + [("noop", {"n": i}) for i in range(500, 1000)])
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "2"), TASKS_LIVE_DRAIN_TIMEOUT="2")
        wait_until(lambda: store.runs(status=[Status.RUNNING], task=["sleepy"]).exists(), 60,
                   "a long run began")
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.output()
        counts = Counter(statuses(runs).values())
        # Nothing held by the stopped worker, nothing failed: finished or pending again.
        assert set(counts) <= {Status.COMPLETED, Status.PENDING}, counts
        assert {r.attempt for r in store.runs(run_ids=[r.pk for r in runs], status=[Status.PENDING])} <= {0}
        done_before = counts[Status.COMPLETED]
        assert len(read_calls(_calls_dir, "noop")) == done_before
        long = [r for r in runs if r.task_name == "sleepy"]
        for run in long:  # pending again (or done): canceled at once, not worth waiting for
            if store.statuses([run.pk])[run.pk] == Status.PENDING:
                assert tasks_live.cancel(run).status == Status.CANCELED
        finisher = spawn(worker_args("--concurrency", "2", "--burst"))
        assert finisher.wait(120) == 0, finisher.output()
    quick = [r for r in runs if r.task_name == "noop"]
    assert Counter(statuses(quick).values()) == {Status.COMPLETED: len(quick)}
    calls = Counter(read_calls(_calls_dir, "noop"))
    assert len(calls) == 1000 and set(calls.values()) == {1}
