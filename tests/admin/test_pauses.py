"""Pausing from the admin: the Tasks list's buttons and actions, the Queues page, and
the reason a waiting run shows in the runs list, on its page and in the JSON."""

from __future__ import annotations

import pytest
from django.urls import reverse

import django_tasks_live as tasks_live
from django_tasks_live import pauses, store
from django_tasks_live.models import Pause, Task
from django_tasks_live.states import Status
from tests.admin.helpers import RUNS, make_run, messages_of, run_page

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/admin/django_tasks_live/task/"


@pytest.fixture(autouse=True)
def _fresh_pauses():
    pauses.forget()
    yield
    pauses.forget()


def test_the_tasks_list_pauses_and_resumes_a_task_by_its_buttons(admin_client):
    listing = admin_client.get(TASKS).content.decode()
    assert 'name="pause" value="task:noop"' in listing and 'form="tl-pause-form"' in listing
    assert '<form id="tl-pause-form" method="post" hidden>' in listing
    url = reverse("admin:django_tasks_live_task_pause")
    response = admin_client.post(url, {"pause": "task:noop", "next": TASKS})
    assert response["Location"] == TASKS
    assert messages_of(response) == [
        "Paused task noop: no worker claims its runs until it is resumed (running runs finish)."]
    assert Pause.objects.get().paused_by == "admin"
    listing = admin_client.get(TASKS).content.decode()
    assert 'name="resume" value="task:noop"' in listing
    response = admin_client.post(url, {"resume": "task:noop", "next": "https://evil.example/"})
    assert response["Location"] == reverse("admin:django_tasks_live_task_queues")  # not off-site
    assert not pauses.read()
    bad = admin_client.post(url, {"pause": "queue:no spaces"})
    assert messages_of(bad)[-1].startswith("Nothing was paused or resumed: queue must be")


def test_the_pause_and_resume_actions_take_the_selected_tasks(admin_client):
    admin_client.get(TASKS)  # the list syncs the registered handlers' rows
    ids = list(Task.objects.filter(name__in=["noop", "echo"]).values_list("pk", flat=True))
    admin_client.post(TASKS, {"action": "pause_tasks", "_selected_action": ids, "index": 0})
    assert pauses.read().tasks == {"noop", "echo"}
    response = admin_client.post(TASKS, {"action": "resume_tasks", "_selected_action": ids,
                                         "index": 0}, follow=True)
    assert not pauses.read()
    assert "Resumed 2 of 2 selected tasks" in response.content.decode()


def test_the_queues_page_lists_waiting_runs_and_pause_state(admin_client):
    make_run(Status.PENDING)
    tasks_live.using(queue="other").start("noop")
    tasks_live.pause(queue="other", reason="maintenance")
    tasks_live.pause(task="echo")
    page = admin_client.get(reverse("admin:django_tasks_live_task_queues"))
    rows = {row.name: row for row in page.context["queues"]}
    assert {"default", "other"} <= set(rows)
    assert (rows["default"].waiting.value, rows["default"].pause) == (1, None)
    assert rows["other"].pause.reason == "maintenance" and rows["other"].waiting.value == 1
    html = page.content.decode()
    assert 'name="resume" value="queue:other"' in html and 'name="pause" value="queue:default"' in html
    assert 'name="resume" value="task:echo"' in html and "maintenance" in html


def test_a_waiting_run_of_a_paused_queue_says_why(admin_client):
    held = tasks_live.using(queue="other").start("noop")
    running = tasks_live.using(queue="other").start("noop")
    store.claim_run(running.pk, "w1")
    tasks_live.pause(queue="other")
    listing = admin_client.get(RUNS).content.decode()
    assert listing.count('<span class="tl-paused" title="queue other is paused">paused</span>') == 1
    page = admin_client.get(run_page(held.pk)).content.decode()
    assert "Waiting: queue other is paused; no worker claims it until it is resumed" in page
    assert "Waiting:" not in admin_client.get(run_page(running.pk)).content.decode()
    assert admin_client.get(f"/tasks/runs/{held.pk}/").json()["run"]["paused"] == (
        "queue other is paused")
    tasks_live.resume(queue="other")
    assert "paused" not in admin_client.get(f"/tasks/runs/{held.pk}/").json()["run"]
