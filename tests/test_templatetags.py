"""The template tags render runs with the attributes the browser client keeps live."""

import json
import re

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory, override_settings

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


def render(source, user=None, **context):
    request = RequestFactory().get("/")
    request.user = user or User.objects.get_or_create(username="staff", is_staff=True)[0]
    context["request"] = request
    return Template("{% load tasks_live %}" + source).render(Context(context))


def attribute(html, name):
    match = re.search(rf'{name}="([^"]*)"', html)
    return match and match.group(1)


def test_script_tag_carries_the_client_configuration():
    with override_settings(TASKS_LIVE={"CLIENT_RECONNECT_INITIAL_MS": 250,
                                       "CLIENT_RECONNECT_MAX_RETRIES": 7}):
        html = render("{% tasks_live_script %}")
    config = json.loads(re.search(r'<script id="tasks-live-config" type="application/json">(.*?)</script>',
                                  html, re.S).group(1))
    assert config["streamUrl"] == "/tasks/events/"
    assert (config["initialDelay"], config["maxDelay"], config["maxRetries"]) == (250, 15000, 7)
    assert config["urls"] == {"start": "/tasks/start/{task}/", "cancel": "/tasks/runs/{id}/cancel/",
                              "rerun": "/tasks/runs/{id}/rerun/", "run": "/tasks/runs/{id}/"}
    assert config["csrfToken"]
    assert '<script src="/static/django_tasks_live/tasks_live.js" defer></script>' in html


def test_task_item_follows_the_latest_run_of_a_task():
    tasks_live.start("import-data", rows=5)
    latest = tasks_live.start("import-data", rows=6)
    store.transition(latest.pk, Status.RUNNING)
    store.save_progress(latest.pk, percent=42.0, progress_message="Importing")
    html = render('{% task_item "import-data" %}')
    assert attribute(html, "data-tasks-live-task") == "import-data"
    assert attribute(html, "data-run-id") == str(latest.pk)
    assert attribute(html, "data-status") == "running"
    assert "tasks-live--running" in html
    assert 'style="width: 42.0%"' in html
    assert "42%" in html and "Importing" in html


def test_task_item_of_a_task_that_never_ran_is_idle():
    html = render('{% task_item "noop" %}')
    assert attribute(html, "data-status") == "idle"
    assert "Not run yet." in html  # from task_item/idle.html
    # Only Start is offered; Cancel and Rerun are hidden until a run exists.
    assert re.search(r'data-tasks-live-action="start" data-tasks-live-show="[^"]*" >Start', html)
    assert re.search(r'data-tasks-live-action="cancel" data-tasks-live-show="[^"]*" hidden>', html)


def test_task_item_takes_a_run_object():
    run = tasks_live.start("add", a=1, b=2)
    html = render("{% task_item run %}", run=run)
    assert attribute(html, "data-tasks-live-run") == str(run.pk)
    assert "data-tasks-live-task" not in html
    assert "Waiting for a worker" in html  # task_item/pending.html


def test_every_text_is_escaped():
    run = tasks_live.start("add", a=1, b=2)
    store.transition(run.pk, Status.RUNNING)
    store.save_progress(run.pk, progress_message='<img src=x onerror="alert(1)">')
    store.transition(run.pk, Status.FAILED, error="<script>alert(2)</script>")
    html = render("{% task_item run %}", run=store.get_run(run.pk))
    assert "<img" not in html and "<script>" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html


def test_templates_are_chosen_per_task_then_per_status(tmp_path):
    (tmp_path / "django_tasks_live/task_item/add").mkdir(parents=True)
    (tmp_path / "django_tasks_live/task_item/add/completed.html").write_text("add completed {{ run.pk }}")
    (tmp_path / "django_tasks_live/task_item/add/default.html").write_text("add any {{ status }}")
    (tmp_path / "django_tasks_live/task_item/running.html").write_text("running {{ task_name }}")
    templates = [{"BACKEND": "django.template.backends.django.DjangoTemplates",
                  "DIRS": [tmp_path], "APP_DIRS": True}]
    done = tasks_live.start("add", a=1, b=2)
    store.transition(done.pk, Status.RUNNING)
    store.transition(done.pk, Status.COMPLETED)
    running = tasks_live.start("noop")
    store.transition(running.pk, Status.RUNNING)
    failed = tasks_live.start("add", a=1, b=2)
    with override_settings(TEMPLATES=templates):
        assert render("{% task_item run %}", run=store.get_run(done.pk)) == f"add completed {done.pk}"
        assert render("{% task_item run %}", run=failed) == "add any pending"
        assert render("{% task_item run %}", run=store.get_run(running.pk)) == "running noop"
        assert "tasks-live-item" in render('{% task_item "import-data" %}')  # the default


def test_unsafe_task_names_never_pick_a_template_path(tmp_path):
    (tmp_path / "django_tasks_live/task_item").mkdir(parents=True)
    (tmp_path / "django_tasks_live/idle.html").write_text("escaped the folder")
    templates = [{"BACKEND": "django.template.backends.django.DjangoTemplates",
                  "DIRS": [tmp_path], "APP_DIRS": True}]
    with override_settings(TEMPLATES=templates):
        html = render('{% task_item "../" %}')
    assert "escaped the folder" not in html and "tasks-live-item" in html


def test_task_list_renders_runs_of_a_status_and_a_template_for_new_ones():
    first = tasks_live.start("noop")
    second = tasks_live.start("add", a=1, b=2)
    store.transition(first.pk, Status.RUNNING)
    html = render('{% task_list status="pending" %}')
    assert attribute(html, "data-tasks-live-list-status") == "pending"
    items = re.findall(r'data-tasks-live-run="(\d+)"', html)
    assert items == [str(second.pk)]
    assert "<template data-tasks-live-template>" in html


def test_task_list_shows_users_their_own_runs_and_anonymous_nothing():
    alice = User.objects.create_user("alice")
    mine = tasks_live.using(owner=alice).start("noop")
    tasks_live.start("noop")
    assert re.findall(r'data-tasks-live-run="(\d+)"', render("{% task_list %}", user=alice)) == [str(mine.pk)]
    assert re.findall(r'data-tasks-live-run="(\d+)"', render("{% task_list %}", user=AnonymousUser())) == []


def test_task_list_rejects_unknown_statuses():
    with pytest.raises(TemplateSyntaxError, match="unknown status bogus"):
        render('{% task_list status="running,bogus" %}')


def test_task_item_rejects_a_non_task():
    with pytest.raises(TemplateSyntaxError, match="task name or a Run"):
        render("{% task_item 42 %}")
