"""The dashboard: figures from one shared read per process, inline SVG charts, permissions."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

import django_tasks_live as tasks_live
from django_tasks_live import stats
from django_tasks_live.models import Worker
from django_tasks_live.states import Status
from tests.admin.helpers import RUNS, make_run

pytestmark = pytest.mark.django_db
URL = "/admin/django_tasks_live/run/dashboard/"



def test_dashboard_counts_charts_queues_tasks_and_workers(admin_client):
    Worker.objects.create(id="worker-1", hostname="host<1>", pid=7, concurrency=4, processed=3)
    make_run(Status.COMPLETED)
    make_run(Status.FAILED)
    make_run(Status.RUNNING)  # held by worker-1
    tasks_live.using(queue="other").start("noop")
    response = admin_client.get(URL)
    content = response.content.decode()
    assert response.status_code == 200
    counts = {status: str(count) for status, _, count in response.context["figures"].counts}
    assert (counts["completed"], counts["failed"], counts["pending"]) == ("1", "1", "1")
    # Two charts: 61 minutes and 24 hours, a bar pair each.
    assert content.count('<svg class="tl-chart"') == 2 and content.count('class="tl-bad"') == 61 + 24
    assert '<span data-tl-figure="finished-hour">2</span> finished in the last hour' in content
    assert "failure rate <span data-tl-figure=\"failure-rate\">50.0%</span>" in content
    assert '>other</a></td><td data-tl-queue="other">1</td>' in content
    assert ">host&lt;1&gt;:7</a></td><td>all</td><td>1/4</td><td>3</td>" in content
    assert ">noop</a></td><td>1</td><td>1</td><td>0</td>" in content  # last day, per task
    assert reverse("admin:django_tasks_live_dashboard") in admin_client.get(RUNS).content.decode()


def test_figures_are_read_once_per_interval_for_every_viewer(admin_client, django_assert_num_queries):
    admin_client.get(URL)
    with django_assert_num_queries(0):
        stats.snapshot()
        stats.snapshot()
    fragment = admin_client.get(URL, {"fragment": "1"})
    assert fragment.status_code == 200 and b"<html" not in fragment.content


def test_dashboard_escapes_task_and_queue_names(admin_client):
    from django_tasks_live import store

    run = make_run(Status.COMPLETED)
    store.runs().filter(pk=run.pk).update(task_name="<script>x</script>", queue="<b>q</b>")
    tasks_live.start("noop")
    store.runs().filter(status="pending").update(queue="<b>q</b>")
    content = admin_client.get(URL).content.decode()
    assert "<script>x" not in content and "&lt;script&gt;x&lt;/script&gt;" in content
    assert "<b>q</b>" not in content and "&lt;b&gt;q&lt;/b&gt;" in content


def test_dashboard_needs_the_view_permission(client):
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(URL).status_code == 403
