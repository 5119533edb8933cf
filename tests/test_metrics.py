"""The Prometheus endpoint: parsed output, staff or token protection, the system check."""

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

import django_tasks_live as tasks_live
from django_tasks_live import metrics, store
from django_tasks_live.checks import check_metrics
from django_tasks_live.models import Worker
from django_tasks_live.states import Status
from tests.admin.helpers import make_run

pytestmark = pytest.mark.django_db
URL = "/tasks/metrics"



def samples(response) -> dict[tuple[str, tuple], float]:
    assert response.status_code == 200, response.content
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples}


def test_metrics_report_runs_queues_durations_retries_and_workers(admin_client):
    minute_ago = timezone.now() - dt.timedelta(minutes=3)
    for seconds, attempt in ((0.3, 1), (3.0, 2)):
        run = make_run(Status.COMPLETED)
        store.runs().filter(pk=run.pk).update(finished_at=minute_ago, attempt=attempt,
                                              started_at=minute_ago - dt.timedelta(seconds=seconds))
    failed = make_run(Status.FAILED)
    store.runs().filter(pk=failed.pk).update(finished_at=minute_ago, started_at=None)
    make_run(Status.RUNNING)
    tasks_live.using(queue="other").start("noop")
    store.runs().filter(status="pending").update(run_after=timezone.now() - dt.timedelta(seconds=90))
    Worker.objects.create(id="w1", hostname="h", pid=1)

    got = samples(admin_client.get(URL))
    noop = ("task", "noop")
    assert got[("tasks_live_runs", (("queue", "default"), ("status", "running"), noop))] == 1
    assert got[("tasks_live_queue_depth", (("queue", "other"),))] == 1
    assert 90 <= got[("tasks_live_queue_oldest_pending_age_seconds", (("queue", "other"),))] < 200
    done = (("queue", "default"), ("status", "completed"), noop)
    assert got[("tasks_live_runs_finished_total", done)] == 2
    assert got[("tasks_live_runs_finished_total", (("queue", "default"), ("status", "failed"), noop))] == 1
    assert got[("tasks_live_run_retries_total", (("queue", "default"), noop))] == 1
    assert got[("tasks_live_run_duration_seconds_count", done)] == 2
    assert round(got[("tasks_live_run_duration_seconds_sum", done)], 3) == 3.3
    assert got[("tasks_live_run_duration_seconds_bucket", (("le", "0.5"), *done))] == 1
    assert got[("tasks_live_run_duration_seconds_bucket", (("le", "5.0"), *done))] == 2
    assert got[("tasks_live_workers", (("state", "alive"),))] == 1


def test_metrics_need_staff_or_the_token(client, settings):
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "METRICS_TOKEN": "s3cret"}
    anonymous = client.get(URL)
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert client.get(URL, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get(URL, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    client.force_login(User.objects.create_user("plain", password="pw"))
    assert client.get(URL).status_code == 403  # logged in, not staff
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(URL).status_code == 200
    assert client.post(URL).status_code == 405


def test_no_token_setting_means_no_bearer_access(client):
    assert client.get(URL, headers={"Authorization": "Bearer "}).status_code == 403


def test_a_scrape_reuses_the_shared_snapshot(admin_client, django_assert_max_num_queries):
    admin_client.get(URL)
    with django_assert_max_num_queries(2):  # the session and the user, no figures
        samples(admin_client.get(URL))


def test_check_errors_when_routed_without_prometheus_client(monkeypatch):
    assert check_metrics() == []
    monkeypatch.setattr(metrics, "available", lambda: False)
    errors = check_metrics()
    assert [e.id for e in errors] == ["tasks_live.E050"] and isinstance(errors[0], checks.Error)


def test_check_is_quiet_when_the_view_is_not_routed(monkeypatch, settings):
    monkeypatch.setattr(metrics, "available", lambda: False)
    settings.ROOT_URLCONF = "django_tasks_live.urls"
    assert check_metrics() == []
