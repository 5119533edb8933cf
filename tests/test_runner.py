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


def test_the_handler_gets_the_types_its_annotations_name():
    from tests.testapp.tasks import Box, Mode

    run = tasks_live.start("typed", mode=Mode.SLOW, box=Box(2, 3))
    assert Run.objects.get(pk=run.pk).kwargs == {"mode": "slow", "box": {"width": 2, "height": 3}}
    done = runner.execute(run.pk, "w1")
    assert (done.status, done.result) == (Status.COMPLETED, {"mode": "Mode.SLOW", "area": 6, "tags": None})


def test_stored_arguments_the_changed_handler_refuses_fail_the_run():
    run = tasks_live.start("typed", mode="fast", box={"width": 2})
    Run.objects.filter(pk=run.pk).update(kwargs={"mode": "gone", "box": {"width": 2}})
    done = runner.execute(run.pk, "w1")
    assert done.status == Status.FAILED
    assert done.error == ("Bad arguments for task 'typed': parameter 'mode' expected Mode "
                          "(one of 'fast', 'slow'), got 'gone' (str).")


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


@pytest.mark.parametrize("where,status,error", [
    # Text a handler produces is stored with U+FFFD for what no database stores.
    ("progress", Status.COMPLETED, ""),
    ("error", Status.FAILED, "x\ufffdy"),
    ("str-raises", Status.FAILED, "<_StrRaises object; str() failed: RuntimeError>"),
    # A result is the handler's data: refused, and the run fails saying why.
    ("result", Status.FAILED,
     "Task 'hostile-text' returned a value that cannot be stored: the result contains a lone "
     "surrogate (\\ud800 at position 1), which is not valid Unicode text and cannot be stored."),
    ("deep-result", Status.FAILED,
     "Task 'hostile-text' returned a value that cannot be stored: the result" + "[0]" * 100
     + " is nested more than 100 levels deep."),
])
def test_unstorable_text_and_results_fail_only_their_run(where, status, error):
    run = run_now("hostile-text", where=where)
    stored = Run.objects.get(pk=run.pk)  # written: what the database accepted
    assert (stored.status, stored.error) == (status, error)
    if where == "progress":
        assert stored.progress_message == "x\ufffdy" and stored.result == "ok"
    if status == Status.FAILED:
        assert stored.errors[-1]["message"] == error and stored.traceback
    assert store.events_after(0, store.runs(run_ids=[run.pk]), 100)  # its events were written


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


def test_a_handler_that_sees_the_cancel_and_returns_ends_canceled_with_its_partial_result():
    with override_settings(TASKS_LIVE={"CANCEL_CHECK_INTERVAL": 0}):
        run = run_now("acknowledges-cancel", cancel_self=True)
    assert (run.status, run.result, run.error) == (Status.CANCELED, {"done": 0}, "")
    stored = Run.objects.get(pk=run.pk)
    assert (stored.status, stored.result) == (Status.CANCELED, {"done": 0})


def test_a_cancel_request_the_handler_never_saw_still_ends_canceled():
    def cancel_then_record(run, target, fields):
        store.transition(run.pk, Status.CANCEL_REQUESTED)  # after the handler's last look
        return runner.record_now(run, target, fields)

    run = tasks_live.start("keep", value=5)
    done = runner.execute(run.pk, "w1", record=cancel_then_record)
    assert (done.status, done.result) == (Status.CANCELED, 5)


def test_a_failure_after_a_cancel_request_is_not_retried():
    # The handler notices the request and fails instead of raising Canceled.
    with override_settings(TASKS_LIVE={"CANCEL_CHECK_INTERVAL": 0}):
        done = run_now("fail-on-cancel")
    assert done is not None and done.status == Status.CANCELED
    assert done.errors[-1]["message"] == "stopped half-way"


# ---------------------------------------------------------------- durable steps


def step_states(run: Run) -> dict[str, str]:
    return {step["name"]: step["state"] for step in run.steps}


def test_a_completed_step_is_not_executed_again_on_retry(_calls_dir):
    from tests.conftest import read_calls

    run = run_now("durable", fail_on_attempt=1)
    assert run.status == Status.RETRYING
    assert step_states(Run.objects.get(pk=run.pk)) == {"fetch": "done"}
    done = run_again(run)
    assert done.status == Status.COMPLETED
    # The second attempt got the first attempt's stored result, not a fresh call.
    assert done.result == {"fetched": {"rows": 3, "attempt": 1}, "stored": 6, "attempt": 2}
    assert read_calls(_calls_dir, "durable-fetch") == [str(run.pk)]
    assert read_calls(_calls_dir, "durable-store") == [str(run.pk)]
    assert step_states(done) == {"fetch": "done", "store": "done"}


def test_step_results_stay_on_the_row_and_out_of_events():
    run = run_now("durable")
    stored = Run.objects.get(pk=run.pk)
    assert [s["result"] for s in stored.steps] == [{"rows": 3, "attempt": 1}, 6]
    assert all("result" not in step for step in stored.to_state()["steps"])
    for event in stored.events.all():
        assert all("result" not in step for step in event.data["steps"])
    # The stepper saw each step begin and end while the run was running.
    seen = [[s["state"] for s in e.data["steps"]] for e in stored.events.filter(kind="progress")]
    assert seen == [["running"], ["done"], ["done", "running"], ["done", "done"]]


def test_sleep_frees_the_executor_and_resumes_without_using_an_attempt(_calls_dir):
    from tests.conftest import read_calls

    before = timezone.now()
    run = run_now("durable", cooldown=600)
    assert (run.status, run.attempt) == (Status.RETRYING, 0)
    assert run.run_after >= before + dt.timedelta(seconds=600)
    stored = Run.objects.get(pk=run.pk)
    assert step_states(stored) == {"fetch": "done", "cooldown": "sleeping"}
    assert stored.progress_message.startswith("Sleeping until ") and "(cooldown)" in stored.progress_message
    assert stored.errors == [] and stored.error == ""
    assert store.claim("w2", None, limit=5) == []  # not before its run_after
    # The sleep is over: move its clock back instead of waiting ten minutes.
    steps = [{**s, "until": before.isoformat()} if s["name"] == "cooldown" else s for s in stored.steps]
    Run.objects.filter(pk=run.pk).update(steps=steps)
    done = run_again(run)
    assert (done.status, done.attempt, done.max_attempts) == (Status.COMPLETED, 1, 3)
    assert done.result["fetched"] == {"rows": 3, "attempt": 1}
    assert step_states(done) == {"fetch": "done", "cooldown": "done", "store": "done"}
    assert read_calls(_calls_dir, "durable-fetch") == [str(run.pk)]


def test_a_run_claimed_before_its_sleep_ends_sleeps_the_rest():
    run = run_now("durable", cooldown=600)
    until = run.run_after
    again = run_again(run)  # run_after moved to now, the step's own time has not come
    assert (again.status, again.run_after, again.attempt) == (Status.RETRYING, until, 0)


def test_a_sleeping_run_is_canceled_at_once():
    run = run_now("durable", cooldown=600)
    assert tasks_live.cancel(run).status == Status.CANCELED


@pytest.mark.django_db(transaction=True)  # its ctx writes from the context's database thread
def test_async_durable_steps_and_sleep(_calls_dir):
    from tests.conftest import read_calls

    run = run_now("async-durable", cooldown=600)
    assert (run.status, run.attempt) == (Status.RETRYING, 0)
    stored = Run.objects.get(pk=run.pk)
    steps = [{**s, "until": timezone.now().isoformat()} if s["name"] == "cooldown" else s
             for s in stored.steps]
    Run.objects.filter(pk=run.pk).update(steps=steps)
    done = run_again(run)
    assert (done.status, done.result) == (Status.COMPLETED, 42)
    assert read_calls(_calls_dir, "async-durable-fetch") == [str(run.pk)]


def test_a_step_result_that_is_not_json_fails_the_run(monkeypatch):
    from django_tasks_live.registry import registry

    def handler(ctx):
        return ctx.step_run("fetch", lambda: {1, 2})

    monkeypatch.setitem(registry._specs, "bad-step", TaskSpec("bad-step", handler))
    run = run_now("bad-step")
    assert run.status == Status.FAILED and run.error_type == "builtins.TypeError"
    assert "the result of step 'fetch'" in run.error


# ---------------------------------------------------------------- should_execute


def test_should_execute_true_runs_the_handler(_calls_dir):
    from tests.conftest import read_calls

    run = run_now("maybe", item="a")
    assert (run.status, run.result) == (Status.COMPLETED, "a")
    assert read_calls(_calls_dir, "asked") == [f"{run.pk}:a"]  # asked with ctx and the arguments
    assert read_calls(_calls_dir, "maybe") == ["a"]


@pytest.mark.parametrize("verdict,message", [
    ("no", "Skipped: should_execute of 'maybe' returned False"),
    ("  superseded by run 12  ", "Skipped: superseded by run 12"),
])
def test_should_execute_false_or_a_reason_skips_the_run_without_calling_the_handler(
        _calls_dir, verdict, message):
    from tests.conftest import read_calls

    run = run_now("maybe", item="b", verdict=verdict)
    assert (run.status, run.progress_message, run.result, run.error) == (Status.SKIPPED, message, None, "")
    assert run.finished_at is not None and run.is_finished
    assert read_calls(_calls_dir, "maybe") == []
    stored = Run.objects.get(pk=run.pk)
    assert (stored.status, stored.progress_message) == (Status.SKIPPED, message)
    last = stored.events.order_by("-id").first()
    assert (last.kind, last.status) == ("status", Status.SKIPPED)


@pytest.mark.parametrize("verdict,error", [
    ("raise", "cannot tell whether c is wanted"),
    ("three", "should_execute of task 'maybe' must return True, False or a reason (a non-empty "
              "string), got 3."),
    ("", "should_execute of task 'maybe' must return True, False or a reason (a non-empty "
         "string), got ''."),
])
def test_a_should_execute_that_raises_or_answers_nonsense_fails_the_run(_calls_dir, verdict, error):
    from tests.conftest import read_calls

    run = run_now("maybe", item="c", verdict=verdict)
    assert (run.status, run.error) == (Status.FAILED, error)
    assert read_calls(_calls_dir, "maybe") == []


def test_a_skipped_run_can_be_rerun():
    run = run_now("maybe", item="d", verdict="no")
    again = tasks_live.rerun(run.pk)
    assert (again.status, again.rerun_of_id, again.kwargs) == (Status.PENDING, run.pk, run.kwargs)
