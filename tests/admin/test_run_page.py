"""One run's page: stepper, JSON, attempts, lineage, timeline, Cancel / Rerun buttons."""

import pytest
from django.urls import reverse

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Schedule
from django_tasks_live.states import Status
from tests.admin.helpers import make_run, messages_of, run_page

pytestmark = pytest.mark.django_db


def test_a_finished_run_page_is_compact_and_read_only(admin_client):
    run = make_run(Status.RUNNING, "import-data", rows=3)
    store.save_progress(run.pk, percent=30.0, progress_message="Downloading",
                        steps=[{"name": "download", "weight": 30, "state": "completed"},
                               {"name": "parse", "weight": 70, "state": "running"}])
    for i in range(3):
        store.save_progress(run.pk, percent=40.0 + i, progress_message=f"Importing {i}")
    store.transition(run.pk, Status.COMPLETED, result={"imported": 3, "path": "/tmp/x"})
    response = admin_client.get(run_page(run.pk))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="_save"' not in content  # nothing to save: runs change via the lifecycle
    assert 'data-tl-button="rerun"' in content and 'data-tl-button="rerun-with"' in content
    assert 'data-tl-button="cancel"' not in content
    assert '<pre class="tl-json">{\n  &quot;delay&quot;' not in content  # only given kwargs
    assert "&quot;rows&quot;: 3" in content  # kwargs as indented JSON
    assert "&quot;imported&quot;: 3" in content  # the result too
    # The stepper: the completed run's steps are completed.
    assert content.count('class="tl-step tl-step-completed"') == 2
    # The timeline: status events and progress folded (3 progress in a row -> 1 line + 2).
    assert "(+3 earlier progress updates)" in content
    assert "admin_live.js" not in content  # nothing live on a finished run's page


def test_attempts_show_each_error_and_a_completed_run_shows_no_stale_error(admin_client):
    run = make_run(Status.RUNNING, "flaky")
    store.transition(run.pk, Status.RETRYING, error="attempt 1 failed", error_type="builtins.RuntimeError",
                     traceback="Traceback (most recent call last):\n  boom",
                     errors=[{"attempt": 1, "type": "builtins.RuntimeError", "message": "attempt 1 failed",
                              "traceback": "Traceback (most recent call last):\n  boom",
                              "worker": "worker-1", "at": "2026-12-02T10:00:00"}])
    store.claim_run(run.pk, "worker-2")
    store.transition(run.pk, Status.COMPLETED, result=2)
    content = admin_client.get(run_page(run.pk)).content.decode()
    assert '<tr class="tl-attempt-failed"><td>1</td>' in content
    assert "<strong>builtins.RuntimeError</strong>: attempt 1 failed" in content
    assert "<summary>traceback</summary>" in content
    assert '<tr class="tl-attempt-completed"><td>2</td><td>completed</td><td>worker-2</td>' in content


def test_an_active_run_page_has_cancel_and_is_live(admin_client):
    run = make_run(Status.RUNNING)
    content = admin_client.get(run_page(run.pk)).content.decode()
    assert 'data-tl-button="cancel"' in content and 'data-tl-button="rerun"' not in content
    assert "admin_live.js" in content and f"/tasks/events/?run={run.pk}" in content


def test_lineage_links_rerun_of_reruns_and_schedule(admin_client):
    schedule = Schedule.objects.create(name="nightly", task_name="noop", cron="0 3 * * *")
    first = make_run(Status.FAILED)
    store.runs().filter(pk=first.pk).update(schedule=schedule)
    second = tasks_live.rerun(first)
    content = admin_client.get(run_page(first.pk)).content.decode()
    assert f'href="{run_page(second.pk)}">#{second.pk}</a>' in content
    assert ">nightly</a>" in content
    assert f'href="{run_page(first.pk)}">#{first.pk}</a>' in admin_client.get(
        run_page(second.pk)).content.decode()


def test_a_flow_page_lists_its_children_and_a_child_links_its_parent(admin_client):
    parent = tasks_live.group(("noop", {}), ("add", {"a": 1, "b": 2}))
    noop, add = store.runs().filter(parent=parent).order_by("position")
    content = admin_client.get(run_page(parent.pk)).content.decode()
    assert f'1. <a href="{run_page(noop.pk)}">#{noop.pk}</a> noop' in content
    assert f'2. <a href="{run_page(add.pk)}">#{add.pk}</a> add' in content
    child = admin_client.get(run_page(add.pk)).content.decode()
    assert f'<a href="{run_page(parent.pk)}">#{parent.pk}</a> <small>step 2</small>' in child


def test_every_run_string_is_escaped_on_the_page(admin_client):
    run = make_run(Status.RUNNING, "echo", payload="<img src=x onerror=alert(1)>",
                   labels={"k": "<b>v</b>"})
    store.save_progress(run.pk, progress_message="<script>alert(1)</script>")
    store.transition(run.pk, Status.FAILED, error="<script>e()</script>", error_type="<i>T</i>")
    content = admin_client.get(run_page(run.pk)).content.decode()
    for raw in ("<script>alert(1)</script>", "<img src=x", "<b>v</b>", "<script>e()</script>", "<i>T</i>"):
        assert raw not in content, raw


def test_cancel_and_rerun_buttons_post_only_and_say_what_happened(admin_client):
    running = make_run(Status.RUNNING)
    cancel_url = reverse("admin:django_tasks_live_run_cancel", args=[running.pk])
    assert admin_client.get(cancel_url).status_code == 405  # POST only
    response = admin_client.post(cancel_url)
    assert response.status_code == 302
    assert store.get_run(running.pk).status == Status.CANCEL_REQUESTED
    assert any(m.startswith(f"Cancel requested for #{running.pk}") for m in messages_of(response))

    pending = make_run(Status.PENDING)
    response = admin_client.post(reverse("admin:django_tasks_live_run_cancel", args=[pending.pk]))
    assert any(m.startswith(f"Canceled #{pending.pk}: it had not started") for m in messages_of(response))

    done = make_run(Status.COMPLETED)
    response = admin_client.post(reverse("admin:django_tasks_live_run_rerun", args=[done.pk]))
    rerun = store.runs().filter(rerun_of=done.pk).get()
    assert response["Location"] == run_page(rerun.pk)

    refused = admin_client.post(reverse("admin:django_tasks_live_run_cancel", args=[done.pk]))
    assert refused.status_code == 302
    assert any("it is already completed, and only a run that has not finished can be canceled" in m
               for m in messages_of(refused))
    missing = admin_client.post(reverse("admin:django_tasks_live_run_cancel", args=[10**9]))
    assert missing.status_code == 302
    assert any("does not exist" in m for m in messages_of(missing))
    assert admin_client.get(run_page(10**9)).status_code == 404


def test_rerun_with_changed_arguments_is_prefilled_and_validated(admin_client):
    done = make_run(Status.COMPLETED, "add", a=1, b=2)
    url = reverse("admin:django_tasks_live_run_rerun_with", args=[done.pk])
    form = admin_client.get(url).context["form"]
    assert (form["a"].value(), form["b"].value()) == (1, 2)
    bad = admin_client.post(url, {"a": "x", "b": "2"})
    assert bad.status_code == 200 and "a" in bad.context["form"].errors
    assert not store.runs().filter(rerun_of=done.pk).exists()
    missing = admin_client.post(url, {"a": "5"})
    assert "b" in missing.context["form"].errors
    response = admin_client.post(url, {"a": "5", "b": "7"})
    rerun = store.runs().filter(rerun_of=done.pk).get()
    assert rerun.kwargs == {"a": 5, "b": 7}
    assert response["Location"] == run_page(rerun.pk)


def test_rerun_with_arguments_of_an_unfinished_run_is_refused(admin_client):
    running = make_run(Status.RUNNING, "add", a=1, b=2)
    url = reverse("admin:django_tasks_live_run_rerun_with", args=[running.pk])
    response = admin_client.post(url, {"a": "5", "b": "7"})
    assert response.status_code == 302
    assert any("cannot be rerun with changed arguments" in m for m in messages_of(response))
    assert not store.runs().filter(rerun_of=running.pk).exists()
