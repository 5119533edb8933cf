"""Schedules in the admin: validated cron, time zone and kwargs, escaped help text."""

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Schedule
from django_tasks_live.registry import registry
from tests.admin.helpers import messages_of

pytestmark = pytest.mark.django_db

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
        ({"kwargs": '{"n": "1"}'}, "kwargs",
         "Bad arguments for task 'noop': parameter 'n' expected int, got '1' (str)."),
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


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ('{"n": "a\\u0000b"}', "NUL character"),
        ('{"n": NaN}', "JSON cannot represent"),
        ('{"n": Infinity}', "JSON cannot represent"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_schedule_kwargs_get_the_checks_create_schedule_makes(admin_client, kwargs, text):
    response = admin_client.post(SCHEDULE_ADD, schedule_form(kwargs=kwargs))
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors.get("kwargs", []))
    assert text in errors, errors
    assert not Schedule.objects.exists()


def test_task_names_in_the_schedule_help_text_are_escaped(admin_client):
    @tasks_live.task("<script>alert(1)</script>")
    def evil(ctx):
        return None

    try:
        content = admin_client.get(SCHEDULE_ADD).content.decode()
    finally:
        registry.remove("<script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content


def _schedule(**fields) -> Schedule:
    values = {"name": "hourly <b>", "task_name": "noop", "cron": "0 * * * *",
              "kwargs": {"n": 2}, "next_run_at": timezone.now() + dt.timedelta(minutes=30), **fields}
    return Schedule.objects.create(**values)


def test_run_now_starts_a_linked_run_and_keeps_the_next_fire(admin_client):
    schedule = _schedule()
    before = Schedule.objects.get()
    response = admin_client.post(f"/admin/django_tasks_live/schedule/{schedule.pk}/run-now/")
    assert response.status_code == 302
    run = store.runs().get()
    assert (run.schedule_id, run.fire_time, run.kwargs) == (schedule.pk, None, {"n": 2})
    assert run.labels == {"schedule": "hourly <b>"} and run.owner is not None
    after = Schedule.objects.get()
    assert (after.next_run_at, after.last_run_at) == (before.next_run_at, before.last_run_at)

    # Twice is two runs (no fire time, so the one-run-per-fire-time rule does not apply).
    admin_client.post("/admin/django_tasks_live/schedule/",
                      {"action": "run_now_action", "_selected_action": [schedule.pk]})
    assert store.runs().filter(schedule=schedule).count() == 2

    page = admin_client.get(f"/admin/django_tasks_live/schedule/{schedule.pk}/change/").content.decode()
    assert f"/schedule/{schedule.pk}/run-now/" in page and ">Run now</button>" in page
    assert f">#{run.pk}</a></td><td>pending</td><td>run now at" in page  # the runs it made
    assert f"/admin/django_tasks_live/run/?schedule={schedule.pk}" in page
    listed = admin_client.get("/admin/django_tasks_live/run/", {"schedule": schedule.pk})
    assert len(listed.context["cl"].result_list) == 2
    assert "hourly &lt;b&gt;" in listed.content.decode()  # the filter names it, escaped


def test_run_now_needs_the_start_permission_and_post(client, admin_client):
    schedule = _schedule()
    assert admin_client.get(f"/admin/django_tasks_live/schedule/{schedule.pk}/run-now/").status_code == 405
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(
        codename="view_schedule", content_type__app_label="django_tasks_live"))
    client.force_login(viewer)
    assert client.post(f"/admin/django_tasks_live/schedule/{schedule.pk}/run-now/").status_code == 403
    page = client.get(f"/admin/django_tasks_live/schedule/{schedule.pk}/change/").content.decode()
    assert "Run now" not in page
    assert not store.runs().exists()


def test_run_now_of_a_schedule_whose_task_left_the_code_says_why(admin_client):
    schedule = _schedule(task_name="gone.task")
    response = admin_client.post(f"/admin/django_tasks_live/schedule/{schedule.pk}/run-now/",
                                 follow=True)
    assert "was not run" in messages_of(response)[0] and "gone.task" in messages_of(response)[0]
    assert not store.runs().exists()
