"""The run lifecycle through every engine: the built-in ``tasks_worker`` and django-q2's
``qcluster`` (ORM broker on the test database, SQLite or PostgreSQL, and the Redis
broker), each a real subprocess started here. The same tests, parametrised."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run, RunEvent
from django_tasks_live.states import Status
from tests.conftest import read_calls
from tests.support.db import service_reachable
from tests.support.djangoq import drop_queue, start_qcluster, use_django_q
from tests.support.processes import Child, children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


@dataclass
class Engine:
    """Starts processes of one engine; runs started by the test go to it."""

    kind: str  # "builtin", "django_q-orm", "django_q-redis"
    spawn: Callable[..., Child]
    env: dict[str, str]

    @property
    def executor(self) -> str:
        return self.kind.split("-")[0]

    def start(self, **env: str) -> Child:
        if self.executor == "builtin":
            return self.spawn(worker_args("--concurrency", "2"), **self.env, **env)
        workers = int(env.pop("TASKS_LIVE_Q_WORKERS", "2"))
        return start_qcluster(self.spawn, workers, **self.env, **env)


ENGINES = [
    "builtin",
    "django_q-orm",
    pytest.param("django_q-redis", marks=pytest.mark.skipif(
        not service_reachable("127.0.0.1", 6379), reason="needs Redis at 127.0.0.1:6379")),
]


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path, settings, monkeypatch) -> Iterator[Engine]:
    kind = request.param
    env = {"TASKS_LIVE_HEARTBEAT_TIMEOUT": "3"}  # a SIGKILLed process is lost after 3 s
    if kind != "builtin":
        env.update(use_django_q(settings, monkeypatch, kind.split("-")[1], EXECUTOR="django_q"))
    with children(tmp_path) as spawn:
        yield Engine(kind, spawn, env)
    drop_queue(env)


def test_progress_cancel_timeouts_and_retries(engine):
    progress = tasks_live.start("import-data", rows=20, delay=0.02)
    pending = tasks_live.using(delay=3600).start("noop")
    cooperative = tasks_live.start("sleepy", seconds=30)
    stubborn = tasks_live.start("sleepy", seconds=30, cooperative=False)
    hang = tasks_live.start("hang")
    coop_timeout = tasks_live.start("coop-timeout")
    flaky = tasks_live.start("flaky", fail_times=2)
    async_run = tasks_live.start("async-add", a=2, b=3)
    engine.start(TASKS_LIVE_Q_WORKERS="4")
    assert tasks_live.cancel(pending).status == Status.CANCELED
    for run in (cooperative, stubborn):
        wait_until(lambda r=run: Run.objects.get(pk=r.pk).status == Status.RUNNING, 30)
        assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED
    results = {r.pk: tasks_live.wait(r, timeout=60)
               for r in (progress, cooperative, stubborn, hang, coop_timeout, flaky, async_run)}
    # The engine survived its killed processes: a run started now still runs.
    after = tasks_live.wait(tasks_live.start("add", a=1, b=1), timeout=30)

    done = results[progress.pk]
    assert (done.status, done.result, done.percent) == (Status.COMPLETED, {"imported": 20}, 100)
    assert [s["state"] for s in done.steps] == ["done", "done"]
    assert RunEvent.objects.filter(run_id=done.pk, kind="progress").count() >= 2
    assert results[cooperative.pk].status == Status.CANCELED
    assert results[stubborn.pk].status == Status.CANCELED
    assert "killed" in results[stubborn.pk].error
    assert results[hang.pk].status == Status.TIMED_OUT
    assert "killed" in results[hang.pk].error
    assert results[coop_timeout.pk].status == Status.TIMED_OUT
    assert results[flaky.pk].status == Status.COMPLETED and results[flaky.pk].attempt == 3
    assert [e["message"] for e in results[flaky.pk].errors] == ["attempt 1 failed",
                                                               "attempt 2 failed"]
    assert results[async_run.pk].result == 5
    assert after.status == Status.COMPLETED and after.result == 2
    assert {r.executor for r in Run.objects.all()} == {engine.executor}


def test_runs_of_a_sigkilled_engine_are_recovered(engine, _calls_dir):
    run = tasks_live.start("resumable", seconds=1.5)
    last_try = tasks_live.start("sleepy", seconds=1.5)  # no retries left: fails "worker lost"
    doomed = engine.start()
    # Both handlers began and are recorded as running (a built-in worker records a run
    # as running once it outlives SHORT_RUN_WINDOW; django-q2's claim sets it at once).
    wait_until(lambda: len(read_calls(_calls_dir, "resumable")) == 1
               and len(read_calls(_calls_dir, "sleepy")) == 1
               and set(store.statuses([run.pk, last_try.pk]).values()) == {Status.RUNNING},
               30, "handlers running")
    os.killpg(doomed.pid, signal.SIGKILL)  # the whole cluster (or worker), as a machine dies
    engine.start()
    finished = tasks_live.wait(run.pk, timeout=40)
    lost = tasks_live.wait(last_try.pk, timeout=40)
    assert finished.status == Status.COMPLETED and finished.attempt == 2
    assert [e["type"] for e in finished.errors] == ["WorkerLost"]
    assert len(set(finished.worker_ids)) == 2
    # One call per attempt, never two at once.
    assert sorted(read_calls(_calls_dir, "resumable")) == [f"{run.pk}:1", f"{run.pk}:2"]
    assert lost.status == Status.FAILED and lost.error == "worker lost"
    assert len(read_calls(_calls_dir, "sleepy")) == 1


def test_every_run_executes_exactly_once(engine, _calls_dir):
    # Two clusters; the ORM broker redelivers a hand-over after 1 s while its run is
    # still executing: the claim refuses the second delivery.
    slow = [tasks_live.start("sleepy", seconds=2.5) for _ in range(4)]
    quick = tasks_live.start_many([("noop", {"n": i}) for i in range(300)])
    for _ in range(2):
        engine.start(TASKS_LIVE_Q_RETRY="1")
    for run in [*slow, *quick]:
        tasks_live.wait(run, timeout=120)
    calls = Counter(read_calls(_calls_dir, "noop"))
    assert len(calls) == len(quick) and set(calls.values()) == {1}
    assert Counter(read_calls(_calls_dir, "sleepy")) == {str(r.pk): 1 for r in slow}
    statuses = Counter(store.runs(run_ids=[r.pk for r in [*slow, *quick]])
                       .values_list("status", flat=True))
    assert statuses == {Status.COMPLETED: len(slow) + len(quick)}
    assert {r.attempt for r in Run.objects.all()} == {1}
