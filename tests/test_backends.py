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
    (lambda: django_add.enqueue(dt.date(2026, 1, 2), 2), TypeError,
     r"^Bad arguments for task 'tests.testapp.tasks.django_add': parameter 'a' expected int, "
     r"got datetime.date\(2026, 1, 2\) \(date\)\.$"),
    (lambda: django_add.enqueue(1, b=True), TypeError, r"parameter 'b' expected int, got True \(bool\)\.$"),
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


# ---------------------------------------------------------------- first-class django.tasks


DJANGO_ADD = "tests.testapp.tasks.django_add"


def test_django_tasks_of_the_apps_tasks_modules_are_registered():
    from django_tasks_live.registry import registry

    spec = registry.get(DJANGO_ADD)
    assert (spec.kind, spec.backend, spec.queue) == ("django", "default", "default")
    assert spec.options()["django_task"] is True
    assert "tests.testapp.tasks.django_async" in registry


def test_tasks_live_start_of_a_django_task_makes_a_django_run(monkeypatch):
    sent = []
    task_enqueued.connect(receiver := lambda sender, task_result, **kw: sent.append(task_result))
    try:
        run = tasks_live.start(DJANGO_ADD, a=2, b=5)
    finally:
        task_enqueued.disconnect(receiver)
    assert (run.kind, run.backend, run.kwargs) == ("django", "default", {"a": 2, "b": 5})
    assert [result.id for result in sent] == [str(run.pk)]
    runner.execute(run.pk)
    assert django_add.get_result(str(run.pk)).return_value == 7
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        tasks_live.start(DJANGO_ADD, a=1)


def test_the_start_endpoint_starts_a_django_task():
    from django.test import Client

    from tests.support.users import operator

    client = Client()
    client.force_login(operator("boss"))
    response = client.post(f"/tasks/start/{DJANGO_ADD}/", {"a": "4", "b": "5"})
    assert response.status_code == 201, response.content
    run = Run.objects.get(pk=response.json()["run"]["id"])
    assert (run.kind, run.kwargs) == ("django", {"a": 4, "b": 5})  # typed by the signature


def test_a_django_task_can_be_scheduled_and_fires_as_a_django_run():
    from django_tasks_live import schedules
    from django_tasks_live.models import Schedule

    schedule = schedules.create_schedule("sums", DJANGO_ADD, "* * * * *", kwargs={"a": 1, "b": 1})
    due = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due)
    [run] = schedules.tick(due)
    assert (run.kind, run.task_name, run.kwargs) == ("django", DJANGO_ADD, {"a": 1, "b": 1})
    runner.execute(run.pk)
    assert Run.objects.get(pk=run.pk).result == 2


def test_sync_tasks_lists_django_tasks_for_the_admin():
    from django_tasks_live.models import Task
    from django_tasks_live.registry import registry

    store.sync_tasks(registry)
    row = Task.objects.get(name=DJANGO_ADD)
    assert row.options["django_task"] is True


def test_tasks_of_another_backend_are_not_registered(settings):
    import types

    from django_tasks_live.backends import register_django_tasks
    from django_tasks_live.compat import BaseTaskBackend, task
    from tests.testapp import tasks as testapp_tasks

    backends_package = BaseTaskBackend.__module__.rsplit(".", 1)[0]  # django.tasks or the backport
    settings.TASKS = {**settings.TASKS,
                      "elsewhere": {"BACKEND": f"{backends_package}.dummy.DummyBackend"}}
    module = types.ModuleType("other_jobs")
    module.other_job = task(backend="elsewhere")(testapp_tasks._record)
    module.here = django_add
    assert [spec.name for spec in register_django_tasks([module])] == [DJANGO_ADD]


@pytest.mark.parametrize("path,reason", [
    # Not imported yet, outside every installed app: never imported (imports run code).
    ("tabnanny.check", "not in an installed app's modules or TASK_MODULES, so it is not imported"),
    ("", "not in an installed app's modules"),
    # Importable (already imported) but not a django.tasks Task: never called.
    ("os.system", "'os.system' is not a django.tasks Task"),
    ("tests.testapp.tasks.nowhere", "Unknown django task 'tests.testapp.tasks.nowhere'"),
])
def test_a_row_written_straight_into_the_database_imports_and_calls_nothing(path, reason):
    import sys

    assert "tabnanny" not in sys.modules
    run = store.create_runs([store.NewRun(task_name=path, kind="django", kwargs={"file": "x"})])[0]
    finished = runner.execute(run.pk, "w1")
    assert (finished.status, finished.error_type) == ("failed", "UnknownTask")
    assert reason in finished.error
    assert "tabnanny" not in sys.modules


def test_the_admin_lists_and_starts_a_django_task(admin_client):
    from django.urls import reverse

    from django_tasks_live.models import Task

    tasks_page = "/admin/django_tasks_live/task/"
    assert f">{DJANGO_ADD}<" in admin_client.get(tasks_page).content.decode()
    url = reverse("admin:django_tasks_live_task_start", args=[Task.objects.get(name=DJANGO_ADD).pk])
    form = admin_client.get(url).context["form"]
    assert form.fields["a"].required and form.fields["b"].required  # from its signature
    admin_client.post(url, {"a": "20", "b": "22"})
    run = store.runs(task=[DJANGO_ADD]).get()
    assert (run.kind, run.kwargs) == ("django", {"a": 20, "b": 22})
    runner.execute(run.pk)
    assert django_add.get_result(str(run.pk)).return_value == 42
    # The runs list offers it in its task filter and filters by it like any task.
    listed = admin_client.get("/admin/django_tasks_live/run/", {"task": DJANGO_ADD})
    assert listed.status_code == 200
    assert [r.pk for r in listed.context["cl"].result_list] == [run.pk]
    [task_filter] = [spec for spec in listed.context["cl"].filter_specs
                     if getattr(spec, "parameter_name", None) == "task"]
    assert DJANGO_ADD in {choice for choice, _ in task_filter.lookup_choices}
