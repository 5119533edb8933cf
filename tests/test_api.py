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


def nested(depth: int) -> list:
    """A list nested ``depth`` deep: [[[...]]]."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


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
    (lambda: tasks_live.start("keep", value=dt.date(2026, 1, 1)), TypeError,
     r"kwargs\['value'\] is a date, which is not JSON-serializable"),
    (lambda: tasks_live.start("keep", {1, 2}), TypeError, r"args\[0\] is a set"),
    (lambda: tasks_live.start("keep", value=float("nan")), TypeError, "JSON cannot represent"),
    (lambda: tasks_live.start("keep", value={1: "x"}), TypeError, "JSON object keys must be strings"),
    (lambda: tasks_live.start("echo", payload="a\x00b"), TypeError,
     r"kwargs\['payload'\] contains a NUL character"),
    (lambda: tasks_live.start("keep", value={"k\x00": 1}), TypeError, r"key 'k\\x00' contains a NUL"),
    (lambda: tasks_live.start("echo", payload="x\ud800y"), TypeError,
     r"kwargs\['payload'\] contains a lone surrogate \(\\ud800 at position 1\)"),
    (lambda: tasks_live.start("keep", ["\udc00"]), TypeError,
     r"args\[0\]\[0\] contains a lone surrogate"),
    (lambda: tasks_live.start("keep", value={"k\ud83d": 1}), TypeError,
     r"key 'k\\ud83d' contains a lone surrogate"),
    (lambda: tasks_live.start("keep", value=nested(100)), TypeError,
     r"kwargs\['value'\](\[0\]){99} is nested more than 100 levels deep"),
    (lambda: tasks_live.start("\ud800"), ValueError, "no lone surrogate"),
    (lambda: tasks_live.start("add", a="1", b=2), TypeError,
     r"^Bad arguments for task 'add': parameter 'a' expected int, got '1' \(str\)\.$"),
    (lambda: tasks_live.start("add", True, b=2), TypeError,
     r"^Bad arguments for task 'add': parameter 'a' expected int, got True \(bool\)\.$"),
])
def test_start_refuses_bad_input_and_writes_nothing(call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert no_rows()


@pytest.mark.parametrize("options,error,message", [
    ({"queue": ""}, ValueError, "queue must be 1-100 letters"),
    ({"queue": "q" * 101}, ValueError, "queue must be 1-100 letters"),
    ({"queue": "q\x00"}, ValueError, "queue must be 1-100 letters"),
    ({"queue": "a b"}, ValueError, r"queue must be 1-100 letters, digits or _.:@- \(what tasks_"),
    ({"queue": "nowhere"}, ValueError, r"queue 'nowhere' is not one of the queues in TASKS.*: default, "),
    ({"labels": {"k": "v\x00"}}, TypeError, r"labels\['k'\] contains a NUL character"),
    ({"labels": {"k": "v\ud800"}}, TypeError,
     r"labels\['k'\] contains a lone surrogate \(\\ud800 at position 1\)"),
    ({"labels": {"k\udfff": "v"}}, TypeError, r"labels key 'k\\udfff' contains a lone surrogate"),
    ({"unique_key": "u\ud800"}, ValueError, "no lone surrogate"),
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
    ([("noop", {}), ("keep", {"value": object()})], TypeError, "not JSON-serializable"),
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


@pytest.mark.parametrize("begin", [True, False], ids=["running", "claimed"])
def test_cancel_of_a_held_run_asks_its_worker_to_stop_it(begin):
    run = tasks_live.start("noop")
    store.claim_run(run.pk, "w1", begin=begin)
    assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED
    assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED  # asking twice is harmless


def test_cancel_is_idempotent():
    run = tasks_live.start("noop")
    first = tasks_live.cancel(run.pk)
    again = tasks_live.cancel(run.pk)
    assert first.status == again.status == Status.CANCELED
    assert again.cancel_requested_at == first.cancel_requested_at  # nothing rewritten


@pytest.mark.django_db(transaction=True)
def test_concurrent_cancels_of_one_run_all_succeed():
    """Cancels racing on one running run (each read it as running) all return it."""
    from django.db import connection

    run = tasks_live.start("noop")
    store.claim_run(run.pk, "w1")
    barrier = threading.Barrier(4)
    answers: list[object] = []

    def cancel() -> None:
        try:
            barrier.wait()
            answers.append(tasks_live.cancel(run.pk).status)
        except Exception as exc:  # collected: the assertion below names it
            answers.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=cancel) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [Status.CANCEL_REQUESTED] * 4


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.TIMED_OUT])
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


# ---------------------------------------------------------------- listing runs


def test_runs_filters_by_status_task_queue_labels_owner_and_since():
    from django.contrib.auth.models import User

    ann = User.objects.create(username="ann")
    old = tasks_live.using(queue="other", labels={"tenant": "acme"}, owner=ann).start("noop")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=3))
    acme = tasks_live.using(queue="other", labels={"tenant": "acme", "k": "v"}).start("add", a=1, b=2)
    other = tasks_live.using(labels={"tenant": "other"}, owner=ann).start("noop")
    store.transition(other.pk, Status.RUNNING)

    def ids(**filters):
        return list(tasks_live.runs(**filters).values_list("id", flat=True))

    assert ids() == [other.pk, acme.pk, old.pk]  # newest first
    assert ids(status="running") == [other.pk]
    assert ids(status=["pending", "running"]) == [other.pk, acme.pk, old.pk]
    assert ids(task="noop") == [other.pk, old.pk]
    assert ids(task=["add"], queue="other") == [acme.pk]
    assert ids(queue=["other"]) == [acme.pk, old.pk]
    assert ids(labels={"tenant": "acme"}) == [acme.pk, old.pk]
    assert ids(labels={"tenant": "acme", "k": "v"}) == [acme.pk]
    assert ids(owner=ann) == ids(owner=ann.pk) == [other.pk, old.pk]
    assert ids(since=dt.timedelta(days=1)) == [other.pk, acme.pk]
    assert ids(since=timezone.now() - dt.timedelta(days=4), owner=ann, status="pending") == [old.pk]
    assert tasks_live.runs(status="completed").count() == 0


@pytest.mark.parametrize(("filters", "error", "message"), [
    ({"status": "done"}, ValueError, "Unknown status 'done'; use one of: pending, "),
    ({"status": 3}, TypeError, "status must be a string or an iterable of strings, got 3."),
    ({"task": [""]}, ValueError, "task must be non-empty strings, got ''."),
    ({"queue": {"a": 1}}, TypeError, "queue must be a string or an iterable"),
    ({"labels": {"a:b": "c"}}, ValueError, "labels must map non-empty strings without ':'"),
    ({"labels": ["x"]}, TypeError, "labels must be a mapping"),
    ({"owner": "ann"}, TypeError, "owner must be a user or a user id, got 'ann'."),
    ({"since": "yesterday"}, TypeError, "since must be a datetime or a timedelta"),
    ({"since": dt.datetime(2026, 1, 1)}, ValueError, "since must be an aware datetime."),
])
def test_runs_refuses_bad_filters(filters, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks_live.runs(**filters)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        tasks_live.runs(colour="red")


@pytest.mark.django_db(transaction=True)
def test_aruns_iterates_asynchronously():
    from asgiref.sync import sync_to_async
    from django.db import connections

    first = tasks_live.start("noop")
    second = tasks_live.using(labels={"tenant": "acme"}).start("noop")

    async def main():
        listed = [run.pk async for run in tasks_live.aruns(task="noop")]
        count = await tasks_live.aruns(labels={"tenant": "acme"}).acount()
        await sync_to_async(connections.close_all)()
        return listed, count

    assert asyncio.run(main()) == ([second.pk, first.pk], 1)


# ---------------------------------------------------------------- unique, debounce, run once


def test_a_unique_start_while_one_is_pending_returns_it():
    first, created = tasks_live.start_or_get("unique-sync", account=7)
    again, created_again = tasks_live.start_or_get("unique-sync", 7, full=True)
    assert (created, created_again, again.pk) == (True, False, first.pk)
    assert tasks_live.start("unique-sync", account=7).created is False
    assert tasks_live.start("unique-sync", account=8).created is True
    assert Run.objects.filter(task_name="unique-sync").count() == 2
    # Once it runs, a start creates the next run (unique while pending, the default).
    store.claim_run(first.pk, "w1")
    nxt, created = tasks_live.start_or_get("unique-sync", account=7)
    assert created and nxt.pk != first.pk and nxt.pending_key == first.pending_key


def test_unique_while_active_shares_a_running_run_until_it_ends():
    first = tasks_live.start("unique-active", n=1)
    store.claim_run(first.pk, "w1")
    assert tasks_live.start_or_get("unique-active", n=1) == (Run.objects.get(pk=first.pk), False)
    assert tasks_live.start_or_get("unique-active", n=2)[1] is True  # other arguments, other key
    store.transition(first.pk, Status.COMPLETED)
    assert tasks_live.start_or_get("unique-active", n=1)[1] is True


def test_a_key_callable_returning_none_exempts_the_start():
    assert tasks_live.start("unique-maybe", n=-1).pk != tasks_live.start("unique-maybe", n=-1).pk
    assert tasks_live.start("unique-maybe", n=1).pk == tasks_live.start("unique-maybe", n=1).pk


def test_the_unique_key_option_refuses_in_start_and_shares_in_start_or_get():
    first = tasks_live.using(unique_key="nightly").start("noop")
    assert tasks_live.using(unique_key="nightly").start_or_get("noop") == (first, False)
    with pytest.raises(ValueError, match="declares its own unique key"):
        tasks_live.using(unique_key="k").start("unique-sync", account=1)


def test_start_many_refuses_unique_tasks_and_writes_nothing():
    with pytest.raises(ValueError, match=r"calls\[1\]: task 'unique-args' is unique"):
        tasks_live.start_many([("noop", {}), ("unique-args", {"n": 1})])
    assert no_rows()


def test_debounced_starts_collapse_into_one_run_with_the_last_arguments():
    before = timezone.now()
    first, created = tasks_live.start_or_get("debounced", value=1)
    assert created and first.run_after >= before + dt.timedelta(seconds=60)
    for value in (2, 3):
        run, created = tasks_live.start_or_get("debounced", value=value)
        assert (run.pk, created) == (first.pk, False)
    stored = Run.objects.get(pk=first.pk)
    assert stored.kwargs == {"value": 3} and stored.run_after == first.run_after
    # Once claimed, the window is over: the next start opens a new one.
    Run.objects.filter(pk=first.pk).update(run_after=timezone.now())
    assert runner.execute(first.pk, "w1").result == 3
    assert tasks_live.start_or_get("debounced", value=4)[1] is True


def test_debounce_keys_keep_separate_windows():
    a = tasks_live.start("debounced-doc", doc="a", text="1")
    b = tasks_live.start("debounced-doc", doc="b", text="1")
    tasks_live.start("debounced-doc", doc="a", text="2")
    assert a.pk != b.pk
    assert Run.objects.get(pk=a.pk).kwargs == {"doc": "a", "text": "2"}
    assert Run.objects.get(pk=b.pk).kwargs == {"doc": "b", "text": "1"}


def test_run_once_returns_the_completed_run_and_allows_retries_after_failures():
    failed = runner.execute(tasks_live.start("once", account=1, fail=True).pk, "w1")
    assert failed.status == Status.FAILED
    run, created = tasks_live.start_or_get("once", account=1)
    assert created and run.pk != failed.pk
    # While it waits or runs, starts share it.
    assert tasks_live.start_or_get("once", account=1) == (run, False)
    done = runner.execute(run.pk, "w1")
    assert done.status == Status.COMPLETED
    for _ in range(2):
        assert tasks_live.start_or_get("once", account=1) == (done, False)
    assert tasks_live.start_or_get("once", account=2)[1] is True
    with pytest.raises(ValueError, match=f"Run {done.pk} was not rerun: run {done.pk} \\(completed\\)"):
        tasks_live.rerun(done)


def test_rerun_of_a_unique_task_shares_its_key():
    old = runner.execute(tasks_live.start("unique-sync", account=3).pk, "w1")
    waiting = tasks_live.start("unique-sync", account=3)
    with pytest.raises(ValueError, match=f"run {waiting.pk} \\(pending\\) already stands for its key"):
        tasks_live.rerun(old)
    tasks_live.cancel(waiting)
    assert tasks_live.rerun(old).rerun_of_id == old.pk
