"""Standard django.tasks code on this backend, executed inline with runner.execute()."""

import asyncio
import datetime as dt

import pytest
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import runner, store
from django_tasks_live.backends import LiveTasksBackend, to_result
from django_tasks_live.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from django_tasks_live.models import Run
from tests.testapp.tasks import django_add, django_async, django_fail, django_with_context

pytestmark = pytest.mark.django_db


def test_enqueue_persists_a_ready_run():
    result = django_add.enqueue(2, b=3)
    run = Run.objects.get(pk=int(result.id))
    assert (run.kind, run.task_name, run.args, run.kwargs, run.backend) == (
        "django", "tests.testapp.tasks.django_add", [2], {"b": 3}, "default")
    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert isinstance(task_backends["default"], LiveTasksBackend)


def test_a_run_executes_and_the_result_refreshes():
    result = django_add.enqueue(2, 3)
    runner.execute(int(result.id))
    result.refresh()
    assert (result.status, result.return_value, result.attempts) == (TaskResultStatus.SUCCESSFUL, 5, 1)
    assert result.finished_at is not None and result.errors == []
    # progress() reached the current run from plain django.tasks code
    assert Run.objects.get(pk=int(result.id)).progress_message == "adding"


def test_get_result_by_id():
    result = django_add.enqueue(1, 1)
    runner.execute(int(result.id))
    fetched = django_add.get_result(result.id)
    assert (fetched.id, fetched.return_value) == (result.id, 2)
    assert task_backends["default"].get_result(result.id).args == [1, 1]


@pytest.mark.parametrize("bad", ["424242", "abc", "", None])
def test_get_result_of_an_unknown_id(bad):
    with pytest.raises(TaskResultDoesNotExist):
        django_add.get_result(bad)


def test_get_result_of_a_live_run_or_another_task():
    live_run = tasks_live.start("noop")
    with pytest.raises(TaskResultDoesNotExist):
        django_add.get_result(str(live_run.pk))
    other = django_fail.enqueue()
    with pytest.raises(TaskResultMismatch):
        django_add.get_result(other.id)


def test_using_run_after_priority_and_queue():
    when = timezone.now() + dt.timedelta(minutes=10)
    result = django_add.using(run_after=when, priority=20, queue_name="other").enqueue(1, 2)
    run = Run.objects.get(pk=int(result.id))
    assert (run.run_after, run.priority, run.queue) == (when, 20, "other")
    assert store.claim("w", None, limit=5) == []  # deferred


def test_a_failure_is_reported_with_its_exception():
    result = django_fail.enqueue()
    runner.execute(int(result.id))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
    assert "django task failed" in result.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018


def test_takes_context_sees_the_attempt():
    result = django_with_context.enqueue("x")
    runner.execute(int(result.id))
    result.refresh()
    assert result.return_value == "x:1"


def test_the_attempt_count_includes_a_running_attempt():
    # A second attempt (its first worker was lost) is attempt 2 while it runs.
    result = django_add.enqueue(1, 1)
    run = Run.objects.get(pk=int(result.id))
    Run.objects.filter(pk=run.pk).update(worker_ids=["dead"], attempt=1, max_attempts=2)
    claimed = store.claim_run(run.pk, "w2")
    assert to_result(claimed).worker_ids == ["dead", "w2"]
    assert to_result(claimed).attempts == 2


def test_an_async_task_function_runs():
    result = django_async.enqueue(21)
    runner.execute(int(result.id))
    result.refresh()
    assert result.return_value == 42


def test_signals_fire_with_the_right_statuses():
    seen = []

    def receiver(signal_name):
        def receive(sender, task_result, **kwargs):
            seen.append((signal_name, task_result.status, sender))
        return receive

    receivers = {name: receiver(name) for name in ("enqueued", "started", "finished")}
    task_enqueued.connect(receivers["enqueued"])
    task_started.connect(receivers["started"])
    task_finished.connect(receivers["finished"])
    try:
        result = django_add.enqueue(1, 2)
        runner.execute(int(result.id))
        failed = django_fail.enqueue()
        runner.execute(int(failed.id))
    finally:
        task_enqueued.disconnect(receivers["enqueued"])
        task_started.disconnect(receivers["started"])
        task_finished.disconnect(receivers["finished"])
    assert [(name, status) for name, status, _ in seen] == [
        ("enqueued", TaskResultStatus.READY),
        ("started", TaskResultStatus.RUNNING),
        ("finished", TaskResultStatus.SUCCESSFUL),
        ("enqueued", TaskResultStatus.READY),
        ("started", TaskResultStatus.RUNNING),
        ("finished", TaskResultStatus.FAILED),
    ]
    assert all(sender is LiveTasksBackend for _, _, sender in seen)


def test_live_signals_are_not_sent_for_live_runs():
    seen = []

    def receive(sender, task_result, **kwargs):
        seen.append(task_result)

    task_finished.connect(receive)
    try:
        runner.execute(tasks_live.start("noop").pk)
    finally:
        task_finished.disconnect(receive)
    assert seen == []


def test_an_unknown_queue_is_an_invalid_task():
    with pytest.raises(InvalidTask):
        django_add.using(queue_name="nope").enqueue(1, 2)
    assert not Run.objects.exists()


@pytest.mark.parametrize("call,error,message", [
    (lambda: django_add.enqueue(1), TypeError, "missing a required argument: 'b'"),
    (lambda: django_add.enqueue(1, 2, 3), TypeError, "too many positional arguments"),
    (lambda: django_add.enqueue(dt.date.today(), 2), TypeError, r"args\[0\] is a date"),
    (lambda: django_add.using(run_after=dt.datetime(2030, 1, 1)).enqueue(1, 2), InvalidTask,
     "run_after must be an aware datetime"),
])
def test_bad_arguments_are_refused_at_enqueue(call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert not Run.objects.exists()


def test_rerun_of_a_django_run_is_a_linked_django_run():
    result = django_add.enqueue(2, 2)
    runner.execute(int(result.id))
    new = tasks_live.rerun(int(result.id))
    assert (new.kind, new.rerun_of_id, new.args) == ("django", int(result.id), [2, 2])


@pytest.mark.django_db(transaction=True)
def test_async_twins():
    from asgiref.sync import sync_to_async
    from django.db import connections

    async def main():
        result = await django_add.aenqueue(3, 4)
        await sync_to_async(runner.execute)(int(result.id))
        fetched = await django_add.aget_result(result.id)
        await result.arefresh()
        await sync_to_async(connections.close_all)()
        return result, fetched

    result, fetched = asyncio.run(main())
    assert result.return_value == fetched.return_value == 7


def test_a_finished_run_counts_each_worker_once():
    result = django_add.enqueue(1, 1)
    runner.execute(int(result.id), "w1")
    assert django_add.get_result(result.id).worker_ids == ["w1"]
