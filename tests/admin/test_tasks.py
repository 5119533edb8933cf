"""Tasks: read-only rows with readable options, the Start form from the signature."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from django_tasks_live import store
from django_tasks_live.models import Task
from django_tasks_live.states import Status
from tests.admin.helpers import make_run, messages_of

pytestmark = pytest.mark.django_db

TASKS = "/admin/django_tasks_live/task/"


def task_id(client, name: str) -> int:
    client.get(TASKS)  # syncs the Task rows
    return Task.objects.get(name=name).pk


def test_task_list_shows_every_registered_task(admin_client):
    run = make_run(Status.COMPLETED, "noop")
    content = admin_client.get(TASKS).content.decode()
    for name in ("noop", "add", "import-data", "every-minute"):
        assert f">{name}<" in content, name
    assert "never run" in content  # e.g. "add"
    assert f">#{run.pk}</a> completed" in content
    assert "Delete selected" not in content  # tasks live in code


def test_task_rows_are_read_only_with_readable_options(admin_client):
    pk = task_id(admin_client, "import-data")
    response = admin_client.get(f"{TASKS}{pk}/change/")
    content = response.content.decode()
    assert response.status_code == 200
    assert 'name="_save"' not in content and "deletelink" not in content
    assert "<th>Timeout</th><td>300 s</td>" in content
    assert "<th>Retries</th><td>3, exponential backoff</td>" in content
    assert "<th>Steps</th><td>download, parse</td>" in content
    assert '{"timeout"' not in content  # not raw JSON
    assert admin_client.post(f"{TASKS}{pk}/change/", {"enabled": ""}).status_code == 403
    assert admin_client.post(f"{TASKS}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert Task.objects.filter(pk=pk).exists()


def test_start_action_starts_argument_free_tasks_and_explains_the_others(admin_client):
    admin_client.get(TASKS)
    ids = list(Task.objects.filter(name__in=["noop", "add"]).values_list("pk", flat=True))
    response = admin_client.post(TASKS, {"action": "start_tasks", "_selected_action": ids},
                                 follow=True)
    assert list(store.runs().values_list("task_name", "status")) == [("noop", Status.PENDING)]
    assert any("Task 'add' was not started: needs arguments" in m for m in messages_of(response))


def test_start_form_is_built_from_the_signature(admin_client):
    url = reverse("admin:django_tasks_live_task_start", args=[task_id(admin_client, "import-data")])
    form = admin_client.get(url).context["form"]
    assert type(form.fields["rows"]).__name__ == "IntegerField" and form.fields["rows"].initial == 100
    assert type(form.fields["delay"]).__name__ == "FloatField"
    assert not form.fields["rows"].required
    add = admin_client.get(reverse("admin:django_tasks_live_task_start",
                                   args=[task_id(admin_client, "add")]))
    assert add.context["form"].fields["a"].required
    assert 'class="required"' in add.content.decode()


def test_start_form_rejects_bad_arguments_and_starts_good_ones(admin_client):
    url = reverse("admin:django_tasks_live_task_start", args=[task_id(admin_client, "add")])
    bad = admin_client.post(url, {"a": "one", "b": "2"})
    assert bad.status_code == 200 and "a" in bad.context["form"].errors
    assert not store.runs().exists()
    bad_label = admin_client.post(url, {"a": "1", "b": "2", "labels": "no colon"})
    assert "labels" in bad_label.context["options_form"].errors
    response = admin_client.post(url, {"a": "1", "b": "2", "queue": "other", "priority": "5",
                                       "labels": "tenant:acme"})
    run = store.runs().get()
    assert (run.kwargs, run.queue, run.priority, run.labels) == (
        {"a": 1, "b": 2}, "other", 5, {"tenant": "acme"})
    assert response["Location"] == reverse("admin:django_tasks_live_run_change", args=[run.pk])


def test_start_needs_the_add_run_permission(client):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(
        codename="view_task", content_type__app_label="django_tasks_live"))
    client.force_login(user)
    client.get(TASKS)
    url = reverse("admin:django_tasks_live_task_start", args=[Task.objects.get(name="noop").pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {}).status_code == 403
    assert not store.runs().exists()


def test_task_rows_of_handlers_no_longer_in_code_are_flagged(admin_client):
    Task.objects.create(name="removed-task")
    response = admin_client.get(TASKS)
    row = next(t for t in response.context["cl"].result_list if t.name == "removed-task")
    admin = response.context["cl"].model_admin
    assert (admin.registered(row), admin.startable(row)) == (False, False)
    assert admin.start_link(row) == "not in code"


def test_start_form_checks_annotations_and_puts_the_error_on_its_field(admin_client):
    url = reverse("admin:django_tasks_live_task_start", args=[task_id(admin_client, "typed")])
    bad = admin_client.post(url, {"mode": '"medium"', "box": '{"width": 2}', "tags": '["a", 3]'})
    assert bad.status_code == 200
    errors = bad.context["form"].errors
    assert "mode" in errors and "expected" in errors["mode"][0], errors
    assert not store.runs().exists()
    response = admin_client.post(url, {"mode": '"fast"', "box": '{"width": 2}', "tags": '["a"]'})
    assert response.status_code == 302
    assert store.runs().get().kwargs == {"mode": "fast", "box": {"width": 2}, "tags": ["a"]}


def test_task_list_shows_last_24h_counts_and_durations(admin_client):
    import datetime as dt

    from django.utils import timezone

    now = timezone.now()
    old = make_run(Status.COMPLETED, "add", a=1, b=1)
    store.runs().filter(pk=old.pk).update(finished_at=now - dt.timedelta(days=2))  # outside
    for took in (1, 2, 3, 4):
        run = make_run(Status.COMPLETED, "add", a=1, b=1)
        store.runs().filter(pk=run.pk).update(started_at=now - dt.timedelta(seconds=took),
                                              finished_at=now)
    make_run(Status.FAILED, "add", a=1, b=1)
    response = admin_client.get(TASKS)
    content = response.content.decode()
    assert "4 ok, 1 failed, 20% failed" in content
    # p50 / p95 of 1..4 s, estimated inside the duration buckets (1-2.5 s, 2.5-5 s).
    assert "2.50 s / 4.75 s" in content
    assert f">#{run.pk + 1}</a> failed" in content  # the latest run, from one query
