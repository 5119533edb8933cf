"""The admin as an operations console, driven through Django's test client."""

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.admin import worker_state
from django_tasks_live.models import Run, Schedule, Task, Worker
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db

RUNS = "/admin/django_tasks_live/run/"

# How to bring a fresh pending run into each status through the lifecycle.
PATHS = {
    Status.PENDING: [],
    Status.RUNNING: [Status.RUNNING],
    Status.RETRYING: [Status.RUNNING, Status.RETRYING],
    Status.CANCEL_REQUESTED: [Status.RUNNING, Status.CANCEL_REQUESTED],
    Status.COMPLETED: [Status.RUNNING, Status.COMPLETED],
    Status.FAILED: [Status.RUNNING, Status.FAILED],
    Status.CANCELED: [Status.CANCELED],
    Status.TIMED_OUT: [Status.RUNNING, Status.TIMED_OUT],
}


def make_run(status: Status, task: str = "noop", **kwargs) -> Run:
    run = tasks_live.start(task, **kwargs)
    for step in PATHS[status]:
        if step == Status.RUNNING:  # as a worker does: the claim counts the attempt
            run = store.claim_run(run.pk, "worker-1")
        else:
            run = store.transition(run.pk, step)
    return run


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def listed(response) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [run.pk for run in response.context["cl"].result_list]


# ---------------------------------------------------------------- run changelist


def test_changelist_filters_by_each_status(admin_client):
    runs = {status: make_run(status) for status in Status}
    for status, run in runs.items():
        response = admin_client.get(RUNS, {"status__exact": status.value})
        assert listed(response) == [run.pk], status


def test_changelist_filters_by_task_and_queue_and_searches_by_id(admin_client):
    noop = make_run(Status.PENDING)
    other = tasks_live.using(queue="other").start("add", a=1, b=2)

    assert listed(admin_client.get(RUNS, {"task": "add"})) == [other.pk]
    assert listed(admin_client.get(RUNS, {"queue": "other"})) == [other.pk]
    assert listed(admin_client.get(RUNS, {"q": str(noop.pk)})) == [noop.pk]
    # Text where an id is expected: no match on the id, no error.
    assert other.pk not in listed(admin_client.get(RUNS, {"q": "no-such-run"}))


def test_changelist_shows_progress_and_attempts(admin_client):
    run = make_run(Status.RUNNING, "import-data")
    store.save_progress(run.pk, percent=42.0, progress_message="halfway")
    content = admin_client.get(RUNS).content.decode()
    assert '<progress max="100" value="42"></progress> 42%' in content
    assert "1/4" in content  # attempt 1 of 1 + 3 retries


def test_run_page_is_read_only_with_timeline(admin_client):
    run = make_run(Status.COMPLETED)
    response = admin_client.get(reverse("admin:django_tasks_live_run_change", args=[run.pk]))
    content = response.content.decode()
    assert response.status_code == 200
    assert "Timeline" in content and "created" in content
    assert 'name="_save"' not in content  # nothing to save: runs change via the lifecycle
    assert "Rerun" in content  # the button for a finished run


# ---------------------------------------------------------------- run actions


def test_cancel_action_cancels_waiting_and_asks_running_to_stop(admin_client):
    pending, running = make_run(Status.PENDING), make_run(Status.RUNNING)
    response = admin_client.post(
        RUNS, {"action": "cancel_runs", "_selected_action": [pending.pk, running.pk]}, follow=True
    )
    assert response.status_code == 200
    assert store.get_run(pending.pk).status == Status.CANCELED
    assert store.get_run(running.pk).status == Status.CANCEL_REQUESTED
    assert any(m.startswith("Canceled") for m in messages_of(response))


def test_cancel_action_reports_each_finished_run_as_an_error(admin_client):
    done, pending = make_run(Status.COMPLETED), make_run(Status.PENDING)
    response = admin_client.post(
        RUNS, {"action": "cancel_runs", "_selected_action": [done.pk, pending.pk]}, follow=True
    )
    assert response.status_code == 200
    msgs = messages_of(response)
    assert any(f"Run #{done.pk}" in m and "completed" in m for m in msgs), msgs
    assert store.get_run(done.pk).status == Status.COMPLETED  # untouched
    assert store.get_run(pending.pk).status == Status.CANCELED  # the others still done


def test_rerun_action_starts_linked_runs_and_refuses_unfinished_ones(admin_client):
    failed, running = make_run(Status.FAILED, "add", a=1, b=2), make_run(Status.RUNNING)
    response = admin_client.post(
        RUNS, {"action": "rerun_runs", "_selected_action": [failed.pk, running.pk]}, follow=True
    )
    assert response.status_code == 200
    rerun = store.runs().filter(rerun_of=failed.pk).get()
    assert (rerun.status, rerun.kwargs) == (Status.PENDING, {"a": 1, "b": 2})
    assert not store.runs().filter(rerun_of=running.pk).exists()
    assert any("only finished runs can be rerun" in m for m in messages_of(response))


def test_cancel_and_rerun_buttons_on_the_run_page(admin_client):
    running = make_run(Status.RUNNING)
    cancel_url = reverse("admin:django_tasks_live_run_cancel", args=[running.pk])
    assert admin_client.get(cancel_url).status_code == 405  # POST only
    response = admin_client.post(cancel_url)
    assert response.status_code == 302
    assert store.get_run(running.pk).status == Status.CANCEL_REQUESTED

    done = make_run(Status.COMPLETED)
    response = admin_client.post(reverse("admin:django_tasks_live_run_rerun", args=[done.pk]))
    rerun = store.runs().filter(rerun_of=done.pk).get()
    assert response["Location"] == reverse("admin:django_tasks_live_run_change", args=[rerun.pk])

    # A second cancel of a finished run: an error message and a redirect, never a 500.
    missing = admin_client.post(reverse("admin:django_tasks_live_run_cancel", args=[10**9]))
    assert missing.status_code == 302
    assert any("does not exist" in m for m in messages_of(missing))


def test_view_only_staff_sees_runs_but_cannot_cancel(client):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(user)
    run = make_run(Status.PENDING)
    response = client.get(RUNS)
    assert listed(response) == [run.pk]
    assert "cancel_runs" not in response.content.decode()
    cancel = client.post(reverse("admin:django_tasks_live_run_cancel", args=[run.pk]))
    assert cancel.status_code == 403
    assert store.get_run(run.pk).status == Status.PENDING


# ---------------------------------------------------------------- schedules

SCHEDULE_ADD = "/admin/django_tasks_live/schedule/add/"


def schedule_form(**overrides):
    data = {"name": "nightly", "task_name": "noop", "cron": "0 3 * * *", "timezone": "UTC",
            "kwargs": "{}", "queue": "default", "enabled": "on"}
    return {**data, **overrides}


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"cron": "61 * * * *"}, "cron", "not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
        ({"task_name": "nope"}, "task_name", "Unknown task 'nope'"),
        ({"kwargs": "[1, 2]"}, "kwargs", "must be a JSON object"),
        ({"kwargs": '{"x": 1}'}, "kwargs", "Bad arguments for task 'noop'"),
        ({"kwargs": "{not json"}, "kwargs", "Enter a valid JSON"),
    ],
)
def test_schedule_form_shows_validation_errors(admin_client, overrides, field, text):
    response = admin_client.post(SCHEDULE_ADD, schedule_form(**overrides))
    assert response.status_code == 200  # the form again, not a redirect or a 500
    errors = response.context["adminform"].form.errors
    assert text in " ".join(errors.get(field, [])), errors
    assert not Schedule.objects.exists()


def test_schedule_saved_with_next_run_and_fire_time_preview(admin_client):
    response = admin_client.post(SCHEDULE_ADD, schedule_form(kwargs='{"n": 3}',
                                                             timezone="Europe/Paris"))
    assert response.status_code == 302
    schedule = Schedule.objects.get()
    assert schedule.kwargs == {"n": 3}
    assert timezone.now() < schedule.next_run_at <= timezone.now() + dt.timedelta(days=1)
    assert schedule.next_run_at.astimezone(dt.timezone(dt.timedelta(0))).hour in (1, 2)  # 03:00 Paris

    content = admin_client.get("/admin/django_tasks_live/schedule/").content.decode()
    assert content.count("03:00 CET") + content.count("03:00 CEST") == 3  # next three fires


# ---------------------------------------------------------------- tasks

TASKS = "/admin/django_tasks_live/task/"


def test_task_list_shows_every_registered_task(admin_client):
    run = make_run(Status.COMPLETED, "noop")
    content = admin_client.get(TASKS).content.decode()
    for name in ("noop", "add", "import-data", "every-minute"):
        assert f">{name}<" in content, name
    assert "never run" in content  # e.g. "add"
    assert f">#{run.pk}</a> completed" in content
    assert Task.objects.filter(name="import-data").exists()


def test_start_action_starts_argument_free_tasks_and_explains_the_others(admin_client):
    admin_client.get(TASKS)  # syncs the Task rows
    ids = list(Task.objects.filter(name__in=["noop", "add"]).values_list("pk", flat=True))
    response = admin_client.post(TASKS, {"action": "start_tasks", "_selected_action": ids},
                                 follow=True)
    assert response.status_code == 200
    assert list(store.runs().values_list("task_name", "status")) == [("noop", Status.PENDING)]
    assert any("Task 'add'" in m and "needs arguments" in m for m in messages_of(response))


# ---------------------------------------------------------------- workers


def test_worker_states_from_heartbeat(admin_client, settings):
    now = timezone.now()
    timeout = 3
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "HEARTBEAT_TIMEOUT": timeout}
    Worker.objects.create(id="w-alive", hostname="h", pid=1, heartbeat_at=now)
    Worker.objects.create(id="w-lost", hostname="h", pid=2,
                          heartbeat_at=now - dt.timedelta(seconds=timeout + 1))
    Worker.objects.create(id="w-stopped", hostname="h", pid=3, heartbeat_at=now, stopped_at=now)
    assert {w.id: worker_state(w, now) for w in Worker.objects.all()} == {
        "w-alive": "alive", "w-lost": "lost", "w-stopped": "stopped"}

    for state in ("alive", "lost", "stopped"):
        response = admin_client.get("/admin/django_tasks_live/worker/", {"state": state})
        assert [w.id for w in response.context["cl"].result_list] == [f"w-{state}"]


def test_schedule_actions_and_code_schedules_read_only(admin_client):
    admin_client.post(SCHEDULE_ADD, schedule_form())
    schedule = Schedule.objects.get()
    response = admin_client.post("/admin/django_tasks_live/schedule/",
                                 {"action": "disable", "_selected_action": [schedule.pk]})
    assert response.status_code == 302
    assert not Schedule.objects.get().enabled
    admin_client.post("/admin/django_tasks_live/schedule/",
                      {"action": "enable", "_selected_action": [schedule.pk]})
    assert Schedule.objects.get().enabled

    store.sync_code_schedules([spec for spec in tasks_live.registry if spec.cron])
    code = Schedule.objects.get(from_code=True)
    page = admin_client.get(f"/admin/django_tasks_live/schedule/{code.pk}/change/")
    form_fields = page.context["adminform"].form.fields
    assert "cron" not in form_fields and "task_name" not in form_fields  # synced from code
    assert "enabled" in form_fields


def test_task_rows_of_handlers_no_longer_in_code_are_flagged(admin_client):
    Task.objects.create(name="removed-task")
    response = admin_client.get(TASKS)
    row = next(t for t in response.context["cl"].result_list if t.name == "removed-task")
    admin = response.context["cl"].model_admin
    assert (admin.registered(row), admin.startable(row)) == (False, False)
