"""What a handler sees: progress (throttled), steps, cancel and timeout checks."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import override_settings

import django_tasks_live as tasks_live
from django_tasks_live import events, runner, store
from django_tasks_live.context import Canceled, TaskContext, TaskTimeout, current_context
from django_tasks_live.models import Run, RunEvent
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


def live(**overrides):
    return override_settings(TASKS_LIVE={"RETRY_BACKOFF_BASE": 0.05, **overrides})


def context_for(task: str = "import-data", deadline: float | None = None, **kwargs) -> TaskContext:
    """A context for a freshly claimed run of ``task``."""
    run = store.claim_run(tasks_live.start(task, **kwargs).pk, "w1")
    return TaskContext(run.pk, task=run.task_name, attempt=run.attempt, max_attempts=run.max_attempts,
                       labels=run.labels, steps=run.steps, deadline=deadline)


def progress_events(run_id: int) -> int:
    return RunEvent.objects.filter(run_id=run_id, kind="progress").count()


# ---------------------------------------------------------------- progress


def test_progress_is_persisted_at_most_every_interval(monkeypatch):
    pushed = []
    monkeypatch.setattr(events, "push_now", pushed.extend)
    ctx = context_for("noop")
    with live(PROGRESS_PERSIST_INTERVAL=0.25, PROGRESS_PUSH_INTERVAL=0.1):
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 1.0:
            i += 1
            ctx.progress("working", i, 1_000_000)
            time.sleep(0.001)
    elapsed = time.monotonic() - started
    assert i > 200  # many reports...
    assert 2 <= progress_events(ctx.run.id) <= elapsed / 0.25 + 1  # ...few writes: <= 4/s
    assert len(pushed) <= elapsed / 0.1 + 1  # push-only previews between writes, <= 10/s
    assert all(m["id"] is None and m["kind"] == "progress" for m in pushed)
    # The last report is not lost: the runner writes it with the terminal status.
    assert ctx.final_fields(success=True)["progress_current"] == i


def test_the_first_report_is_persisted_at_once():
    ctx = context_for("noop")
    ctx.progress("starting", 0, 10)
    run = Run.objects.get(pk=ctx.run.id)
    assert (run.progress_message, run.progress_current, run.progress_total, run.percent) == (
        "starting", 0.0, 10.0, 0.0)


def test_the_final_progress_always_lands_after_a_run():
    with live(PROGRESS_PERSIST_INTERVAL=10):  # nothing but the first report persists mid-run
        run = runner.execute(tasks_live.start("import-data", rows=500).pk)
    assert run.status == Status.COMPLETED
    assert (run.progress_current, run.progress_total, run.percent) == (500.0, 500.0, 100.0)
    assert progress_events(run.pk) <= 3  # the two steps (always written) and the first report


def test_percent_from_current_and_total():
    ctx = context_for("noop")
    ctx.progress(current=3, total=12)
    assert Run.objects.get(pk=ctx.run.id).percent == 25.0
    ctx.progress(current=20)  # clamped
    assert ctx.final_fields(success=False)["percent"] == 100.0


@pytest.mark.parametrize("args,error,message", [
    (("x", "3", 10), TypeError, "progress current must be a number"),
    (("x", 1, True), TypeError, "progress total must be a number"),
    (("x", 1, -5), ValueError, "progress total must be >= 0"),
    (("x", float("nan"), 10), ValueError, "progress current must be a finite number"),
    (("x", 1, float("inf")), ValueError, "progress total must be a finite number"),
])
def test_bad_progress_is_a_clear_error(args, error, message):
    ctx = context_for("noop")
    with pytest.raises(error, match=message):
        ctx.progress(*args)
    assert progress_events(ctx.run.id) == 0


# ---------------------------------------------------------------- steps


def test_steps_and_weights_give_the_percent():
    ctx = context_for("import-data")  # steps download (30) and parse (70)
    ctx.step("download", "fetching")
    assert Run.objects.get(pk=ctx.run.id).percent == 0.0
    ctx.step("parse")
    run = Run.objects.get(pk=ctx.run.id)
    assert run.percent == 30.0 and run.progress_message == "fetching"
    assert [(s["name"], s["state"]) for s in run.steps] == [("download", "done"), ("parse", "running")]
    with live(PROGRESS_PERSIST_INTERVAL=0):
        ctx.progress("parsing", 50, 100)
    assert Run.objects.get(pk=ctx.run.id).percent == 65.0  # 30 + 70 * 50%
    final = ctx.final_fields(success=True)
    assert final["percent"] == 100.0 and {s["state"] for s in final["steps"]} == {"done"}


def test_a_failed_run_marks_its_running_step_failed():
    ctx = context_for("import-data")
    ctx.step("download")
    final = ctx.final_fields(success=False)
    assert [s["state"] for s in final["steps"]] == ["failed", "pending"]


def test_an_undeclared_step_is_a_clear_error():
    ctx = context_for("import-data")
    declared = r"declared: \['download', 'parse'\]"
    with pytest.raises(ValueError, match=rf"Unknown step 'upload' for task 'import-data'; {declared}"):
        ctx.step("upload")


# ---------------------------------------------------------------- cancel and timeout


def test_is_canceled_notices_a_cancel_request():
    ctx = context_for("noop")
    with live(CANCEL_CHECK_INTERVAL=0):
        assert not ctx.is_canceled()
        ctx.check()  # nothing to stop for
        tasks_live.cancel(ctx.run.id)
        assert ctx.is_canceled()
        with pytest.raises(Canceled, match=f"Run {ctx.run.id} was canceled"):
            ctx.check()


def test_the_first_check_reads_the_status_later_ones_only_every_interval():
    ctx = context_for("noop")
    with live(CANCEL_CHECK_INTERVAL=60):
        assert not ctx.is_canceled()  # read once: a cancel asked just before is seen
        tasks_live.cancel(ctx.run.id)
        assert not ctx.is_canceled()  # cheap: no query until the interval passed


def test_a_cancel_asked_before_the_handler_began_is_seen_at_the_first_check():
    ctx = context_for("noop")
    tasks_live.cancel(ctx.run.id)
    with live(CANCEL_CHECK_INTERVAL=60):
        assert ctx.is_canceled()


def test_a_progress_write_also_notices_the_cancel():
    ctx = context_for("noop")
    tasks_live.cancel(ctx.run.id)
    with live(CANCEL_CHECK_INTERVAL=60):
        ctx.progress("still going", 1, 2)
        assert ctx.is_canceled()


def test_a_deleted_run_counts_as_canceled():
    ctx = context_for("noop")
    Run.objects.filter(pk=ctx.run.id).delete()
    with live(CANCEL_CHECK_INTERVAL=0):
        assert ctx.is_canceled()


def test_check_raises_once_the_deadline_passed():
    ctx = context_for("noop", deadline=time.monotonic() + 0.05)
    ctx.check()
    assert 0 < ctx.time_left() <= 0.05
    time.sleep(0.06)
    with pytest.raises(TaskTimeout, match="exceeded its time limit"):
        ctx.check()


def test_run_info_is_readable():
    ctx = context_for("noop")
    assert (ctx.run.task, ctx.run.attempt, ctx.run.max_attempts) == ("noop", 1, 1)


# ---------------------------------------------------------------- helpers and async twins


def test_current_context_outside_a_run_is_a_clear_error():
    with pytest.raises(RuntimeError, match="No django-tasks-live run is executing here"):
        current_context()
    with pytest.raises(RuntimeError, match="No django-tasks-live run is executing here"):
        tasks_live.progress("x")


def test_current_context_inside_a_run():
    ctx = context_for("noop")
    token = ctx.bind()
    try:
        assert current_context() is ctx
        tasks_live.progress("via helper", 1, 4)
    finally:
        ctx.unbind(token)
    assert Run.objects.get(pk=ctx.run.id).percent == 25.0


@pytest.mark.django_db(transaction=True)
def test_async_twins():
    from django.db import connection, connections

    from django_tasks_live import context

    ctx = context_for("import-data")

    async def handler_like():
        await ctx.astep("download")
        await ctx.aprogress("half", 1, 2)
        canceled_before = await ctx.ais_canceled()
        await asyncio.to_thread(tasks_live.cancel, ctx.run.id)
        with live(CANCEL_CHECK_INTERVAL=0), pytest.raises(Canceled):
            await ctx.acheck()
        return canceled_before

    # The twins share one database thread (one connection per process, not per call).
    with ThreadPoolExecutor(1) as pool:
        loop = asyncio.new_event_loop()
        loop.set_default_executor(pool)
        try:
            assert loop.run_until_complete(handler_like()) is False
            loop.run_until_complete(asyncio.to_thread(connections.close_all))
        finally:
            loop.close()
    assert context._db_thread.submit(lambda: connection.connection is not None).result()
    context._db_thread.submit(connections.close_all).result()

    run = Run.objects.get(pk=ctx.run.id)
    assert run.status == Status.CANCEL_REQUESTED and run.steps[0]["state"] == "running"


# ---------------------------------------------------------------- durable steps


@pytest.mark.parametrize("name", ["", "x" * 101, "a\x00b", 7])
def test_a_bad_step_name_is_a_clear_error(name):
    ctx = context_for("noop")
    with pytest.raises(ValueError, match="step name must be a non-empty string"):
        ctx.step_run(name, lambda: 1)


@pytest.mark.parametrize("seconds", [-1, float("inf"), float("nan"), "5", True])
def test_bad_sleep_seconds_are_a_clear_error(seconds):
    ctx = context_for("noop")
    with pytest.raises(ValueError, match="sleep seconds must be a finite number"):
        ctx.sleep("cooldown", seconds)


def test_a_step_of_a_run_rescued_elsewhere_is_not_executed():
    ctx = context_for("noop")
    store.release(ctx.run.id, "WorkerLost", "worker lost")  # back to pending for another worker
    calls = []
    with pytest.raises(Canceled, match="no longer running here"):
        ctx.step_run("fetch", lambda: calls.append(1))
    assert calls == []


def test_a_declared_step_can_be_durable():
    ctx = context_for("import-data")
    assert ctx.step_run("download", lambda: "file.csv") == "file.csv"
    run = Run.objects.get(pk=ctx.run.id)
    assert [(s["name"], s["state"]) for s in run.steps] == [("download", "done"), ("parse", "pending")]
    assert run.percent == 30.0
