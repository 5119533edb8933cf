"""The real ``tasks_worker`` command in subprocesses, driven and signalled by the tests."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from django.db import connection

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run, Worker
from django_tasks_live.states import Status
from tests.conftest import read_calls
from tests.support.db import requires_postgres
from tests.support.processes import children, wait_until, worker_args
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]
# A lost worker is declared lost after 3 s here (the suite's default is more forgiving,
# so a worker starved of CPU on a busy machine is not taken for dead).
FAST_RESCUE = {"TASKS_LIVE_HEARTBEAT_TIMEOUT": "3"}


def test_four_workers_run_every_run_exactly_once(tmp_path, _calls_dir):
    total = 2000
    runs = tasks_live.start_many([("noop", {"n": i}) for i in range(total)])
    with children(tmp_path) as spawn:
        workers = [spawn(worker_args("--concurrency", "2", "--burst")) for _ in range(4)]
        for worker in workers:
            assert worker.wait(240) == 0, worker.output()
    calls = Counter(read_calls(_calls_dir, "noop"))
    assert len(calls) == total and set(calls.values()) == {1}
    counts = Counter(store.runs(run_ids=[r.pk for r in runs]).values_list("status", flat=True))
    assert counts == {Status.COMPLETED: total}
    # Each run went pending -> claimed -> completed, with one event per change: a short
    # run costs no write between its claim and its outcome.
    run = Run.objects.get(pk=runs[0].pk)
    assert [e.status for e in run.events.order_by("id")] == ["pending", "claimed", "completed"]


def test_large_arguments_and_results_do_not_jam_the_executor_pipes(tmp_path):
    # Many runs queued on one executor, each far larger than a pipe buffer, both ways:
    # the supervisor's sends must never wait on an executor that waits on the supervisor.
    payload = "x" * 200_000
    runs = tasks_live.start_many([("echo", {"payload": payload})] * 60)
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "1", "--burst"))
        assert worker.wait(120) == 0, worker.output()
    done = store.runs(run_ids=[r.pk for r in runs])
    assert {(r.status, len(r.result)) for r in done} == {(Status.COMPLETED, len(payload))}


def test_sigkilled_worker_is_recovered_by_another(tmp_path, _calls_dir):
    run = tasks_live.start("resumable", seconds=1.0)
    last_try = tasks_live.start("sleepy", seconds=1.0)  # no retries left: fails "worker lost"
    with children(tmp_path) as spawn:
        doomed = spawn(worker_args("--worker-id", "doomed", "--concurrency", "2"), **FAST_RESCUE)
        # Both handlers began and outlived SHORT_RUN_WINDOW: recorded as running.
        wait_until(lambda: store.statuses([run.pk, last_try.pk])
                   == {run.pk: Status.RUNNING, last_try.pk: Status.RUNNING}, 20, "running")
        assert len(read_calls(_calls_dir, "resumable")) == 1
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        rescuer = spawn(worker_args("--worker-id", "rescuer"), **FAST_RESCUE)
        finished = tasks_live.wait(run.pk, timeout=30)
        lost = tasks_live.wait(last_try.pk, timeout=30)
        rescuer.stop()
    assert time.monotonic() - killed_at < 30
    assert finished.status == Status.COMPLETED
    assert finished.attempt == 2
    assert [e["type"] for e in finished.errors] == ["WorkerLost"]
    assert finished.worker_ids == ["doomed", "rescuer"]
    # The killed executor died with its supervisor: one call per attempt, never two at once.
    assert sorted(read_calls(_calls_dir, "resumable")) == [f"{run.pk}:1", f"{run.pk}:2"]
    assert lost.status == Status.FAILED and lost.error == "worker lost"
    assert len(read_calls(_calls_dir, "sleepy")) == 1
    # The rescued worker's row says so; the rescuer stopped cleanly and is not lost.
    assert Worker.objects.get(pk="doomed").lost_at is not None
    assert Worker.objects.get(pk="rescuer").lost_at is None


def test_a_durable_step_is_not_executed_again_after_the_worker_is_sigkilled(tmp_path, _calls_dir):
    run = tasks_live.start("durable", hold_on_attempt=1)
    with children(tmp_path) as spawn:
        doomed = spawn(worker_args("--worker-id", "doomed"), **FAST_RESCUE)
        # "fetch" is done and stored; the handler holds between the two steps.
        wait_until(lambda: read_calls(_calls_dir, "durable-held"), 20, "the first step ended")
        os.killpg(doomed.pid, signal.SIGKILL)
        rescuer = spawn(worker_args("--worker-id", "rescuer"), **FAST_RESCUE)
        finished = tasks_live.wait(run.pk, timeout=30)
        rescuer.stop()
    assert (finished.status, finished.attempt) == (Status.COMPLETED, 2)
    assert [e["type"] for e in finished.errors] == ["WorkerLost"]
    assert finished.result == {"fetched": {"rows": 3, "attempt": 1}, "stored": 6, "attempt": 2}
    assert read_calls(_calls_dir, "durable-fetch") == [str(run.pk)]
    assert read_calls(_calls_dir, "durable-held") == [str(run.pk)]
    assert read_calls(_calls_dir, "durable-store") == [str(run.pk)]
    assert [(s["name"], s["state"]) for s in finished.steps] == [("fetch", "done"), ("store", "done")]


def test_a_sleeping_run_frees_its_executor_and_resumes(tmp_path, _calls_dir):
    sleeper = tasks_live.start("durable", cooldown=3.0)
    with children(tmp_path) as spawn:
        spawn(worker_args("--concurrency", "1"))
        wait_until(lambda: Run.objects.get(pk=sleeper.pk).status == Status.RETRYING, 20, "the sleep")
        wakes_at = Run.objects.get(pk=sleeper.pk).run_after
        # The one executor is free while the run sleeps: another run completes meanwhile.
        other = tasks_live.wait(tasks_live.start("noop", n=1).pk, timeout=30)
        finished = tasks_live.wait(sleeper.pk, timeout=30)
    assert other.status == Status.COMPLETED and other.finished_at < wakes_at < finished.finished_at
    assert (finished.status, finished.attempt) == (Status.COMPLETED, 1)
    assert read_calls(_calls_dir, "durable-fetch") == [str(sleeper.pk)]
    assert [s["state"] for s in finished.steps] == ["done", "done", "done"]


def test_max_tasks_counts_across_executors_and_leaves_the_rest_pending(tmp_path, _calls_dir):
    runs = tasks_live.start_many([("noop", {"n": i}) for i in range(10)])
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "2", "--max-tasks", "4"))
        assert worker.wait(60) == 0, worker.output()
    counts = Counter(store.runs(run_ids=[r.pk for r in runs]).values_list("status", flat=True))
    assert counts == {Status.COMPLETED: 4, Status.PENDING: 6}
    assert len(read_calls(_calls_dir, "noop")) == 4
    assert all(r.attempt == 0 for r in store.runs(status=[Status.PENDING]))


def test_a_killed_executor_is_replaced_and_nothing_it_held_is_lost(tmp_path, _calls_dir):
    # Claimed together: the quick run ends first (its outcome is reported, not yet
    # written), then the executor is SIGKILLed in the middle of the second.
    quick = tasks_live.start("noop", n=7)
    slow = tasks_live.start("resumable", seconds=1.0)
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "1"))
        wait_until(lambda: read_calls(_calls_dir, "resumable"), 20, "the slow run began")
        [log] = _calls_dir.glob("resumable-*.log")
        os.kill(int(log.stem.rsplit("-", 1)[1]), signal.SIGKILL)  # the executor, not the worker
        finished = tasks_live.wait(slow.pk, timeout=30)
        assert worker.proc.poll() is None, worker.output()
    assert Run.objects.get(pk=quick.pk).status == Status.COMPLETED
    assert read_calls(_calls_dir, "noop") == ["7"]
    assert finished.status == Status.COMPLETED and finished.attempt == 2
    assert [e["type"] for e in finished.errors] == ["ExecutorDied"]
    assert sorted(read_calls(_calls_dir, "resumable")) == [f"{slow.pk}:1", f"{slow.pk}:2"]


def test_cancel_timeouts_retries_against_a_real_worker(tmp_path):
    pending = tasks_live.using(delay=3600).start("noop")
    cooperative = tasks_live.start("sleepy", seconds=30)
    stubborn = tasks_live.start("sleepy", seconds=30, cooperative=False)
    hang = tasks_live.start("hang")
    coop_timeout = tasks_live.start("coop-timeout")
    flaky = tasks_live.start("flaky", fail_times=2)
    with children(tmp_path) as spawn:
        # Four executors start slowly on a busy machine; the waits below begin once up.
        spawn(worker_args("--concurrency", "4")).wait_for_output("tasks_worker ready", 90)
        assert tasks_live.cancel(pending).status == Status.CANCELED
        for run in (cooperative, stubborn):
            wait_until(lambda r=run: Run.objects.get(pk=r.pk).status == Status.RUNNING, 20)
            assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED
        results = {r.pk: tasks_live.wait(r, timeout=30)
                   for r in (cooperative, stubborn, hang, coop_timeout, flaky)}
    assert results[cooperative.pk].status == Status.CANCELED
    assert results[stubborn.pk].status == Status.CANCELED
    assert "killed" in results[stubborn.pk].error
    assert results[hang.pk].status == Status.TIMED_OUT
    assert "killed" in results[hang.pk].error
    assert results[coop_timeout.pk].status == Status.TIMED_OUT
    assert results[flaky.pk].status == Status.COMPLETED
    assert results[flaky.pk].attempt == 3
    assert [e["message"] for e in results[flaky.pk].errors] == ["attempt 1 failed", "attempt 2 failed"]


def test_sigterm_drains_in_flight_and_requeues_the_rest(tmp_path):
    slow = [tasks_live.start("sleepy", seconds=1.5) for _ in range(4)]
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "1"))
        wait_until(lambda: store.runs(status=[Status.RUNNING]).count() >= 1, 20, "a run started")
        time.sleep(0.3)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    statuses = Counter(store.runs(run_ids=[r.pk for r in slow]).values_list("status", flat=True))
    # The one in flight finished; the others (including prefetched ones) are pending again.
    assert statuses[Status.COMPLETED] >= 1
    assert statuses[Status.COMPLETED] + statuses[Status.PENDING] == len(slow)
    assert all(r.attempt == 0 for r in store.runs(status=[Status.PENDING]))


def test_second_signal_stops_at_once_and_releases_the_run(tmp_path):
    run = tasks_live.start("sleepy", seconds=60)
    with children(tmp_path) as spawn:
        worker = spawn(worker_args())
        wait_until(lambda: Run.objects.get(pk=run.pk).status == Status.RUNNING, 20)
        worker.signal(signal.SIGINT)
        time.sleep(0.3)
        worker.signal(signal.SIGINT)
        assert worker.wait(15) == 1
    run.refresh_from_db()
    assert run.status == Status.PENDING  # ready for another worker; the attempt is not used up
    assert run.attempt == 0
    assert run.errors[-1]["type"] == "WorkerStopped"


def test_django_tasks_api_end_to_end(tmp_path):
    from django_tasks_live.compat import TaskResultStatus
    from tests.testapp.tasks import django_add, django_fail, django_with_context

    ok = django_add.enqueue(2, 3)
    ctx = django_with_context.using(priority=5).enqueue("v")
    bad = django_fail.enqueue()
    with children(tmp_path) as spawn:
        spawn(worker_args())
        for result in (ok, ctx, bad):
            wait_until(lambda r=result: (r.refresh(), r.is_finished)[1], 30, f"result {result.id}")
    assert ok.status == TaskResultStatus.SUCCESSFUL and ok.return_value == 5
    assert ctx.return_value == "v:1"
    assert bad.status == TaskResultStatus.FAILED
    assert bad.errors[0].exception_class is ValueError
    assert Run.objects.get(pk=ok.id).percent == 100.0  # the progress() helper reached the run


@requires_postgres
def test_database_outage_is_survived(tmp_path):
    settings = connection.settings_dict
    proxy = TcpProxy(settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432))
    try:
        before = [tasks_live.start("noop", n=i) for i in range(20)]
        with children(tmp_path) as spawn:
            worker = spawn(worker_args("--concurrency", "2"), PGPORT=str(proxy.port))
            for run in before:
                tasks_live.wait(run, timeout=30)
            proxy.cut()
            during = [tasks_live.start("noop", n=i) for i in range(20)]
            time.sleep(3)
            assert worker.proc.poll() is None, worker.output()
            proxy.restore()
            for run in during:
                assert tasks_live.wait(run, timeout=60).status == Status.COMPLETED
    finally:
        proxy.close()
