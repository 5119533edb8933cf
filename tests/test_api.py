"""The public verbs: start, start_many, using, cancel, rerun, wait and their async twins."""

import asyncio
import datetime as dt
import threading
import time

import pytest
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import runner, store
from django_tasks_live.models import Run, RunEvent
from django_tasks_live.registry import UnknownTask
from django_tasks_live.states import IllegalTransition, Status

pytestmark = pytest.mark.django_db


def no_rows() -> bool:
    return not Run.objects.exists() and not RunEvent.objects.exists()


# ---------------------------------------------------------------- start


def test_start_persists_a_pending_run_with_the_task_defaults():
    run = tasks_live.start("import-data", rows=10)
    stored = Run.objects.get(pk=run.pk)
    assert (stored.task_name, stored.status, stored.kwargs, stored.args) == (
        "import-data", Status.PENDING, {"rows": 10}, [])
    assert (stored.max_attempts, stored.queue, stored.attempt) == (4, "default", 0)
    assert [s["name"] for s in stored.steps] == ["download", "parse"]
    assert RunEvent.objects.filter(run=run, kind="created").count() == 1


def test_start_accepts_positional_handler_arguments():
    assert tasks_live.start("add", 1, b=2).args == [1]


def test_using_sets_queue_priority_delay_timeout_labels_and_owner(django_user_model):
    user = django_user_model.objects.create(username="ann")
    before = timezone.now()
    run = tasks_live.using(queue="other", priority=7, delay=60, timeout=5, labels={"tenant": "acme"},
                           owner=user).start("noop", n=1)
    assert (run.queue, run.priority, run.timeout, run.labels, run.owner_id) == (
        "other", 7, 5, {"tenant": "acme"}, user.pk)
    assert run.run_after >= before + dt.timedelta(seconds=59)


def test_using_run_after():
    when = timezone.now() + dt.timedelta(hours=1)
    assert tasks_live.using(run_after=when).start("noop").run_after == when


@pytest.mark.parametrize("call,error,message", [
    (lambda: tasks_live.start("nope"), UnknownTask, "Unknown task 'nope'"),
    (lambda: tasks_live.start("ad", a=1, b=2), UnknownTask, "Did you mean 'add'"),
    (lambda: tasks_live.start(""), ValueError, "task name must be a non-empty string"),
    (lambda: tasks_live.start(None), ValueError, "task name must be a non-empty string"),
    (lambda: tasks_live.start("add", a=1), TypeError, "missing a required argument: 'b'"),
    (lambda: tasks_live.start("noop", m=1), TypeError, "unexpected keyword argument 'm'"),
    (lambda: tasks_live.start("noop", n=dt.date(2026, 1, 1)), TypeError,
     r"kwargs\['n'\] is a date, which is not JSON-serializable"),
    (lambda: tasks_live.start("add", {1, 2}, b=1), TypeError, r"args\[0\] is a set"),
    (lambda: tasks_live.start("noop", n=float("nan")), TypeError, "JSON cannot represent"),
    (lambda: tasks_live.start("noop", n={1: "x"}), TypeError, "JSON object keys must be strings"),
    (lambda: tasks_live.start("echo", payload="a\x00b"), TypeError,
     r"kwargs\['payload'\] contains a NUL character"),
    (lambda: tasks_live.start("noop", n={"k\x00": 1}), TypeError, r"key 'k\\x00' contains a NUL"),
])
def test_start_refuses_bad_input_and_writes_nothing(call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert no_rows()


@pytest.mark.parametrize("options,error,message", [
    ({"queue": ""}, ValueError, "queue must be a non-empty string"),
    ({"queue": "q" * 101}, ValueError, "at most 100 characters"),
    ({"queue": "q\x00"}, ValueError, "no NUL"),
    ({"labels": {"k": "v\x00"}}, TypeError, r"labels\['k'\] contains a NUL character"),
    ({"priority": 101}, ValueError, "priority must be an integer from -100 to 100"),
    ({"priority": True}, ValueError, "priority must be an integer"),
    ({"priority": "1"}, ValueError, "priority must be an integer"),
    ({"run_after": "tomorrow"}, TypeError, "run_after must be a datetime"),
    ({"run_after": dt.datetime(2030, 1, 1)}, ValueError, "run_after must be an aware datetime"),
    ({"delay": -1}, ValueError, "delay must be a non-negative number"),
    ({"delay": float("nan")}, ValueError, "delay must be a non-negative number"),
    ({"delay": 5, "run_after": timezone.now()}, ValueError, "Give run_after or delay, not both"),
    ({"timeout": float("inf")}, ValueError, "timeout must be a positive number"),
    ({"timeout": 0}, ValueError, "timeout must be a positive number"),
    ({"labels": ["a"]}, TypeError, "labels must be a mapping"),
    ({"labels": {"a:b": "c"}}, ValueError, "labels must map non-empty strings without ':'"),
    ({"labels": {"a": 1}}, ValueError, "labels must map"),
    ({"unique_key": ""}, ValueError, "unique_key must be a non-empty string"),
    ({"queue_name": "x"}, TypeError, "Unknown start option 'queue_name'"),
])
def test_using_refuses_bad_options(options, error, message):
    with pytest.raises(error, match=message):
        tasks_live.using(**options)
    assert no_rows()


def test_unique_key_allows_one_active_run():
    first = tasks_live.using(unique_key="nightly").start("noop")
    with pytest.raises(ValueError, match="unique_key 'nightly' is already active"):
        tasks_live.using(unique_key="nightly").start("noop")
    assert Run.objects.count() == 1
    tasks_live.cancel(first)
    assert tasks_live.using(unique_key="nightly").start("noop").pk != first.pk


# ---------------------------------------------------------------- start_many


def test_start_many_creates_all_runs_in_order():
    runs = tasks_live.start_many([("noop", {"n": 1}), ("add", [1], {"b": 2}), ("noop", {})])
    assert [(r.task_name, r.args, r.kwargs) for r in runs] == [
        ("noop", [], {"n": 1}), ("add", [1], {"b": 2}), ("noop", [], {})]
    assert Run.objects.count() == 3


def test_start_many_with_options():
    runs = tasks_live.using(queue="other").start_many([("noop", {}), ("noop", {})])
    assert {r.queue for r in runs} == {"other"}


@pytest.mark.parametrize("calls,error,message", [
    ([("noop", {}), ("nope", {})], UnknownTask, "Unknown task 'nope'"),
    ([("noop", {}), ("add", {"a": 1})], TypeError, "missing a required argument"),
    ([("noop", {}), ("noop", {"n": object()})], TypeError, "not JSON-serializable"),
    ([("noop", {}), "noop"], TypeError, r"calls\[1\] must be \(name, kwargs\)"),
    ([("noop", {}), ("noop", [1])], TypeError, r"calls\[1\] kwargs must be a mapping"),
    ([("noop", {}), ("noop",)], TypeError, r"calls\[1\] must be"),
    (None, TypeError, "calls must be an iterable"),
])
def test_start_many_is_all_or_nothing(calls, error, message):
    with pytest.raises(error, match=message):
        tasks_live.start_many(calls)
    assert no_rows()


def test_start_many_of_nothing_is_nothing():
    assert tasks_live.start_many([]) == []


# ---------------------------------------------------------------- cancel


def test_cancel_of_a_pending_run_ends_it_at_once():
    run = tasks_live.start("noop")
    canceled = tasks_live.cancel(run.pk)
    assert canceled.status == Status.CANCELED and canceled.cancel_requested_at is not None
    assert runner.execute(run.pk) is None  # a worker that claims it later does nothing


def test_cancel_of_a_running_run_asks_it_to_stop():
    run = tasks_live.start("noop")
    store.claim_run(run.pk, "w1")
    assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED
    assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED  # asking twice is harmless


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT])
def test_cancel_of_a_finished_run_is_refused(status):
    run = tasks_live.start("noop")
    Run.objects.filter(pk=run.pk).update(status=status)
    with pytest.raises(IllegalTransition, match=f"from '{status}' to 'canceled'"):
        tasks_live.cancel(run.pk)
    assert Run.objects.get(pk=run.pk).status == status


@pytest.mark.parametrize("verb", [tasks_live.cancel, tasks_live.rerun, tasks_live.wait])
@pytest.mark.parametrize("bad,error,message", [
    (424242, Run.DoesNotExist, "Run 424242 does not exist"),
    ("abc", ValueError, "'abc' is not a run id"),
    (0, ValueError, "0 is not a run id"),
    (True, TypeError, "A run id must be an int"),
    (None, TypeError, "A run id must be an int"),
])
def test_verbs_refuse_bad_run_ids(verb, bad, error, message):
    with pytest.raises(error, match=message):
        verb(bad)


# ---------------------------------------------------------------- rerun


def test_rerun_starts_a_linked_copy():
    old = tasks_live.using(queue="other", priority=3, labels={"t": "1"}).start("noop", n=5)
    runner.execute(old.pk)
    new = tasks_live.rerun(old.pk)
    assert (new.rerun_of_id, new.task_name, new.kwargs, new.queue, new.priority, new.labels) == (
        old.pk, "noop", {"n": 5}, "other", 3, {"t": "1"})
    assert new.status == Status.PENDING and new.attempt == 0
    assert list(Run.objects.get(pk=old.pk).reruns.all()) == [new]


def test_rerun_of_an_unfinished_run_is_refused():
    run = tasks_live.start("noop")
    with pytest.raises(ValueError, match=f"Run {run.pk} is pending; only finished runs can be rerun"):
        tasks_live.rerun(run)
    assert Run.objects.count() == 1


# ---------------------------------------------------------------- wait


def test_wait_returns_a_finished_run():
    run = tasks_live.start("add", a=2, b=3)
    runner.execute(run.pk)
    assert tasks_live.wait(run.pk, timeout=1).result == 5
    assert run.wait(timeout=1).status == Status.COMPLETED


def test_wait_times_out_with_a_clear_error():
    run = tasks_live.start("noop")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"Run {run.pk} is still pending after 0.2s"):
        tasks_live.wait(run, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("options,message", [
    ({"timeout": -1}, "timeout must be a non-negative number of seconds"),
    ({"timeout": "5"}, "timeout must be a non-negative number of seconds"),
    ({"poll": 0}, "poll must be a positive number of seconds"),
])
def test_wait_refuses_bad_timeouts(options, message):
    run = tasks_live.start("noop")
    with pytest.raises(ValueError, match=message):
        tasks_live.wait(run, **options)
    with pytest.raises(ValueError, match=message):
        asyncio.run(tasks_live.await_run(run, **options))


@pytest.mark.django_db(transaction=True)
def test_wait_returns_when_a_worker_finishes_the_run():
    run = tasks_live.start("add", a=1, b=1)

    def worker():
        from django.db import connection

        time.sleep(0.2)
        runner.execute(run.pk, "thread")
        connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    assert tasks_live.start("add", a=0, b=0).pk  # the test thread keeps working meanwhile
    done = tasks_live.wait(run.pk, timeout=10)
    thread.join()
    assert (done.status, done.result, done.worker_ids) == (Status.COMPLETED, 2, ["thread"])


# ---------------------------------------------------------------- async twins


@pytest.mark.django_db(transaction=True)
def test_async_twins():
    from asgiref.sync import sync_to_async
    from django.db import connections

    def execute_and_close(run_id):
        runner.execute(run_id)
        connections.close_all()

    async def main():
        run = await tasks_live.astart("add", a=4, b=5)
        with pytest.raises(TimeoutError, match="still pending"):
            await tasks_live.await_run(run.pk, timeout=0.1)
        await asyncio.to_thread(execute_and_close, run.pk)
        done = await run.await_(timeout=5)
        again = await tasks_live.arerun(done)
        canceled = await tasks_live.acancel(again.pk)
        await sync_to_async(connections.close_all)()  # the twins' database thread
        return done, again, canceled

    done, again, canceled = asyncio.run(main())
    assert done.result == 9
    assert again.rerun_of_id == done.pk and canceled.status == Status.CANCELED
