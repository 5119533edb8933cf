"""runner.execute(): outcome, errors, retries and backoff, timeouts, cancel."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import runner, store
from django_tasks_live.models import Run
from django_tasks_live.registry import TaskSpec
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


def run_now(name: str, *args, **kwargs) -> Run:
    return runner.execute(tasks_live.start(name, *args, **kwargs).pk, "w1")


def run_again(run: Run) -> Run:
    """Let the backoff pass and execute the next attempt."""
    Run.objects.filter(pk=run.pk).update(run_after=timezone.now())
    return runner.execute(run.pk, "w2")


# ---------------------------------------------------------------- outcomes


def test_success_stores_the_result():
    run = run_now("add", 2, b=3)
    assert (run.status, run.result, run.attempt, run.worker_ids) == (Status.COMPLETED, 5, 1, ["w1"])
    assert run.finished_at >= run.started_at
    assert Run.objects.get(pk=run.pk).result == 5


@pytest.mark.django_db(transaction=True)  # its ctx.aprogress() writes from another thread
def test_an_async_handler_runs_to_completion():
    from django.db import connections

    from django_tasks_live import context

    run = run_now("async-add", a=1, b=2)
    assert (run.status, run.result, run.percent) == (Status.COMPLETED, 3, 100.0)
    context._db_thread.submit(connections.close_all).result()  # the ctx database thread


def test_an_exception_stores_class_message_and_traceback():
    run = run_now("only-value-errors", exc="key")
    assert run.status == Status.FAILED
    assert (run.error_type, run.error) == ("builtins.KeyError", "'boom'")
    assert "tests/testapp/tasks.py" in run.traceback and "KeyError: 'boom'" in run.traceback
    assert [(e["attempt"], e["type"]) for e in run.errors] == [(1, "builtins.KeyError")]
    assert run.to_state()["error"] == "builtins.KeyError: 'boom'"


def test_an_exception_without_message_is_named_by_its_class():
    run = run_now("fails-silently")
    assert (run.error_type, run.error) == ("builtins.LookupError", "LookupError")


def test_a_result_that_is_not_json_fails_the_run():
    run = run_now("bad-result")
    assert run.status == Status.FAILED and run.error_type == "builtins.TypeError"
    assert "'bad-result' returned a value that cannot be stored" in run.error
    assert "the result is a set, which is not JSON-serializable" in run.error


def test_text_with_nul_characters_never_wedges_a_write():
    # PostgreSQL stores no NUL character: a result with one fails its run clearly,
    # while exception and progress text a handler produces is stored with U+FFFD.
    run = run_now("nul-text", where="result")
    assert run.status == Status.FAILED
    assert "the result contains a NUL character" in run.error
    run = run_now("nul-text", where="error")
    assert (run.status, run.error) == (Status.FAILED, "bad\ufffdinput")
    assert run.errors[-1]["message"] == "bad\ufffdinput"
    run = run_now("nul-text", where="progress")
    assert (run.status, run.progress_message) == (Status.COMPLETED, "half\ufffdway")


def test_an_unknown_task_fails_the_run():
    run = store.create_runs([store.NewRun(task_name="vanished")])[0]
    done = runner.execute(run.pk)
    assert (done.status, done.error_type) == (Status.FAILED, "UnknownTask")
    assert "Unknown task 'vanished'" in done.error


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.CANCELED, Status.CANCEL_REQUESTED])
def test_a_run_that_is_not_claimable_is_left_alone(status):
    run = tasks_live.start("noop")
    Run.objects.filter(pk=run.pk).update(status=status)
    assert runner.execute(run.pk) is None
    assert Run.objects.get(pk=run.pk).status == status


def test_the_handler_sees_its_run():
    run = run_now("flaky", fail_times=0)
    assert run.result == 1  # ctx.run.attempt


# ---------------------------------------------------------------- retries


def test_a_failed_attempt_is_retried_after_a_backoff():
    before = timezone.now()
    run = run_now("flaky", fail_times=1)  # retries=2, fixed backoff 0.05 s
    assert run.status == Status.RETRYING
    assert before + dt.timedelta(seconds=0.03) <= run.run_after <= timezone.now() + dt.timedelta(seconds=0.07)
    assert run.error == "attempt 1 failed"
    assert store.claim("w2", None, limit=5) == []  # not before its run_after
    done = run_again(run)
    assert (done.status, done.result, done.attempt) == (Status.COMPLETED, 2, 2)
    assert [e["message"] for e in done.errors] == ["attempt 1 failed"]
    assert done.worker_ids == ["w1", "w2"]


def test_retries_stop_after_the_last_attempt_keeping_every_error():
    run = run_now("flaky", fail_times=10)
    run = run_again(run_again(run))
    assert (run.status, run.attempt, run.max_attempts) == (Status.FAILED, 3, 3)
    assert [(e["attempt"], e["message"]) for e in run.errors] == [
        (1, "attempt 1 failed"), (2, "attempt 2 failed"), (3, "attempt 3 failed")]


def test_retry_on_retries_only_the_listed_exceptions():
    assert run_now("only-value-errors", exc="value").status == Status.RETRYING
    assert run_now("only-value-errors", exc="key").status == Status.FAILED


def spec(backoff: str, base: float = 2.0) -> TaskSpec:
    return TaskSpec(name="s", func=lambda ctx: None, backoff=backoff, backoff_base=base)


@pytest.mark.parametrize("backoff,attempt,expected", [
    ("fixed", 1, 2.0), ("fixed", 4, 2.0),
    ("linear", 1, 2.0), ("linear", 3, 6.0),
    ("exponential", 1, 2.0), ("exponential", 2, 4.0), ("exponential", 4, 16.0),
])
def test_backoff_delay_with_jitter_bounds(backoff, attempt, expected):
    delays = [runner.backoff_delay(spec(backoff), attempt) for _ in range(200)]
    assert all(0.75 * expected <= d <= 1.25 * expected for d in delays)
    assert max(delays) - min(delays) > 0.1 * expected  # jitter spreads retries apart


def test_backoff_is_capped():
    with override_settings(TASKS_LIVE={"RETRY_BACKOFF_MAX": 10.0}):
        assert runner.backoff_delay(spec("exponential"), 30) <= 12.5


def test_backoff_base_defaults_to_the_setting():
    with override_settings(TASKS_LIVE={"RETRY_BACKOFF_BASE": 4.0}):
        assert 3.0 <= runner.backoff_delay(spec("fixed", base=None), 1) <= 5.0


# ---------------------------------------------------------------- timeouts and cancel


def test_a_cooperative_handler_times_out_at_ctx_check():
    run = run_now("coop-timeout")  # timeout=0.5, loops on ctx.check()
    assert (run.status, run.error_type) == (Status.TIMED_OUT, "django_tasks_live.context.TaskTimeout")
    assert 0.5 <= (run.finished_at - run.started_at).total_seconds() < 2


def test_a_per_run_timeout_overrides_the_task():
    run = runner.execute(tasks_live.using(timeout=0.2).start("sleepy", seconds=5).pk)
    assert run.status == Status.TIMED_OUT
    assert (run.finished_at - run.started_at).total_seconds() < 1.5


def test_an_async_handler_times_out_without_checking():
    run = run_now("async-sleepy")  # timeout=0.2, sleeps 5 s
    assert run.status == Status.TIMED_OUT and "TimeoutError" in run.error_type
    assert (run.finished_at - run.started_at).total_seconds() < 1.5


def test_a_handler_stops_at_a_cancel_request():
    with override_settings(TASKS_LIVE={"CANCEL_CHECK_INTERVAL": 0}):
        run = run_now("cancels-itself")
    assert (run.status, run.result, run.error) == (Status.CANCELED, None, "")
    assert run.progress_message == "after the request"


def test_a_failure_after_a_cancel_request_is_not_retried():
    # The handler notices the request and fails instead of raising Canceled.
    with override_settings(TASKS_LIVE={"CANCEL_CHECK_INTERVAL": 0}):
        done = run_now("fail-on-cancel")
    assert done is not None and done.status == Status.CANCELED
    assert done.errors[-1]["message"] == "stopped half-way"
