"""The permissions matrix: each console button, action, page and endpoint with and
without the permission it needs (start_run, cancel_run, rerun_run, pause_run; the
older add_run/change_run still grant what they did). Without it: no button, no action,
and 403 on a forged POST."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

import django_tasks_live as tasks_live
from django_tasks_live import pauses, store
from django_tasks_live.models import Task
from django_tasks_live.states import Status
from tests.admin.helpers import RUNS, make_run, run_page
from tests.support.users import grant

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/admin/django_tasks_live/task/"

# Who may do what: (extra permissions beside view_run, start, cancel, rerun, pause).
MATRIX = [
    ((), False, False, False, False),                           # view-only staff: read-only
    (("start_run",), True, False, False, False),
    (("cancel_run",), False, True, False, False),
    (("rerun_run",), False, False, False, False),               # a rerun starts: needs start too
    (("rerun_run", "start_run"), True, False, True, False),
    (("pause_run",), False, False, False, True),
    (("add_run", "change_run"), True, True, True, False),       # the permissions of before
    (("start_run", "cancel_run", "rerun_run", "pause_run"), True, True, True, True),
]


@pytest.fixture(autouse=True)
def _fresh_pauses():
    pauses.forget()
    yield
    pauses.forget()


def staff_client(*codenames: str) -> Client:
    user = grant(User.objects.create_user("staff", password="x", is_staff=True), "view_run", "view_task",
                 *codenames)
    client = Client()
    client.force_login(user)
    return client


def actions_offered(client: Client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None: no action offered at all
    return {value for value, _ in form.fields["action"].choices if value} if form else set()


def forged_action(client: Client, url: str, action: str, pk: int) -> int:
    return client.post(url, {"action": action, "_selected_action": [pk], "index": 0}).status_code


@pytest.mark.parametrize(("perms", "start", "cancel", "rerun", "pause"), MATRIX)
def test_run_buttons_and_actions_follow_the_permissions(perms, start, cancel, rerun, pause):
    client = staff_client(*perms)
    pending, done = make_run(Status.PENDING), make_run(Status.COMPLETED)
    pending_page = client.get(run_page(pending.pk)).content.decode()
    done_page = client.get(run_page(done.pk)).content.decode()
    assert ('data-tl-button="cancel"' in pending_page) is cancel
    assert ('data-tl-button="rerun"' in done_page) is rerun
    assert ('data-tl-button="rerun-with"' in done_page) is rerun
    assert actions_offered(client, RUNS) == ({"cancel_runs"} if cancel else set()) | (
        {"rerun_runs"} if rerun else set())

    if not cancel:
        assert client.post(reverse("admin:django_tasks_live_run_cancel", args=[pending.pk])
                           ).status_code == 403
        assert forged_action(client, RUNS, "cancel_runs", pending.pk) == 403
        assert store.get_run(pending.pk).status == Status.PENDING
    if not rerun:
        assert client.post(reverse("admin:django_tasks_live_run_rerun", args=[done.pk])
                           ).status_code == 403
        assert client.get(reverse("admin:django_tasks_live_run_rerun_with", args=[done.pk])
                          ).status_code == 403
        assert forged_action(client, RUNS, "rerun_runs", done.pk) == 403
        assert not store.runs().filter(rerun_of=done.pk).exists()
    if cancel:
        client.post(reverse("admin:django_tasks_live_run_cancel", args=[pending.pk]))
        assert store.get_run(pending.pk).status == Status.CANCELED
    if rerun:
        client.post(reverse("admin:django_tasks_live_run_rerun", args=[done.pk]))
        assert store.runs().filter(rerun_of=done.pk).count() == 1


@pytest.mark.parametrize(("perms", "start", "cancel", "rerun", "pause"), MATRIX)
def test_task_buttons_and_actions_follow_the_permissions(perms, start, cancel, rerun, pause):
    client = staff_client(*perms)
    listing = client.get(TASKS).content.decode()
    task = Task.objects.get(name="noop")
    start_url = reverse("admin:django_tasks_live_task_start", args=[task.pk])
    assert (start_url in listing) is start
    assert ('data-tl-button="pause"' in listing) is pause
    assert actions_offered(client, TASKS) == ({"start_tasks"} if start else set()) | (
        {"pause_tasks", "resume_tasks"} if pause else set())
    queues_page = client.get(reverse("admin:django_tasks_live_task_queues"))
    assert queues_page.status_code == 200  # view-only staff see the queues, read-only
    assert ('data-tl-button="pause"' in queues_page.content.decode()) is pause

    pause_url = reverse("admin:django_tasks_live_task_pause")
    assert client.get(pause_url).status_code == 405  # POST only
    answer = client.post(pause_url, {"pause": "queue:other"})
    assert answer.status_code == (302 if pause else 403)
    assert (pauses.read().queues == {"other"}) is pause
    if not pause:
        assert forged_action(client, TASKS, "pause_tasks", task.pk) == 403
        assert not pauses.read()
    if not start:
        assert client.get(start_url).status_code == 403
        assert client.post(start_url, {}).status_code == 403
        assert forged_action(client, TASKS, "start_tasks", task.pk) == 403
        assert not store.runs().exists()


@pytest.mark.parametrize(("perms", "start", "cancel", "rerun", "pause"), MATRIX)
def test_the_endpoints_follow_the_same_permissions(perms, start, cancel, rerun, pause):
    client = staff_client(*perms)
    running, done = make_run(Status.RUNNING), make_run(Status.COMPLETED)  # not theirs
    started = client.post("/tasks/start/noop/", "{}", content_type="application/json")
    assert started.status_code == (201 if start else 403)
    assert client.post(f"/tasks/runs/{running.pk}/cancel/").status_code == (200 if cancel else 403)
    assert client.post(f"/tasks/runs/{done.pk}/rerun/").status_code == (201 if rerun else 403)
    assert client.get(f"/tasks/runs/{running.pk}/").status_code == 200  # all of them view


def test_start_permission_setting_still_names_who_may_start(settings):
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "START_PERMISSION": "django_tasks_live.view_run"}
    client = staff_client()  # view_run only: the setting makes it enough to start
    assert client.post("/tasks/start/noop/", "{}", content_type="application/json"
                       ).status_code == 201


def test_pause_and_resume_posts_need_the_csrf_token():
    user = grant(User.objects.create_user("op", password="x", is_staff=True), "view_run", "view_task",
                 "pause_run")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    pause_url = reverse("admin:django_tasks_live_task_pause")
    assert client.post(pause_url, {"pause": "task:noop"}).status_code == 403  # no token
    assert not pauses.read()
    page = client.get(reverse("admin:django_tasks_live_task_queues"))
    token = page.cookies["csrftoken"].value if "csrftoken" in page.cookies else \
        client.cookies["csrftoken"].value
    response = client.post(pause_url, {"pause": "task:noop", "csrfmiddlewaretoken": token,
                                       "next": TASKS})
    assert (response.status_code, response["Location"]) == (302, TASKS)
    assert pauses.read().tasks == {"noop"}
    tasks_live.resume(task="noop")
