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
from tests.support.users import operator

pytestmark = pytest.mark.django_db


def render(source, user=None, **context):
    request = RequestFactory().get("/")
    request.user = user or User.objects.filter(username="staff").first() or operator()
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
    running = render("{% task_item run %}", run=store.get_run(run.pk))
    store.transition(run.pk, Status.FAILED, error="<script>alert(2)</script>")
    failed = render("{% task_item run %}", run=store.get_run(run.pk))
    assert "<img" not in running + failed and "<script>" not in running + failed
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in running
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in failed


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


def test_task_list_and_task_item_filter_by_labels():
    acme_eu = tasks_live.using(labels={"tenant": "acme", "region": "eu"}).start("noop")
    tasks_live.using(labels={"tenant": "acme", "region": "us"}).start("noop")
    tasks_live.using(labels={"tenant": "globex"}).start("noop")
    html = render('{% task_list label="tenant:acme, region:eu" %}')
    assert re.findall(r'data-tasks-live-run="(\d+)"', html) == [str(acme_eu.pk)]
    # The client applies the same filter to runs that appear later.
    assert attribute(html, "data-tasks-live-list-label") == "tenant:acme,region:eu"
    item = render('{% task_item "noop" label="region:eu" %}')
    assert attribute(item, "data-run-id") == str(acme_eu.pk)
    assert attribute(item, "data-tasks-live-label") == "region:eu"
    idle = render('{% task_item "noop" label="tenant:initech" %}')
    assert attribute(idle, "data-status") == "idle"


@pytest.mark.parametrize("tag", ['{% task_list label="tenant" %}',
                                 '{% task_item "noop" label="a:1,a:2" %}'])
def test_a_bad_label_filter_is_a_template_error(tag):
    with pytest.raises(TemplateSyntaxError, match="label"):
        render(tag)


# ---------------------------------------------------------------- arguments, outcomes, login


def test_task_item_sends_the_arguments_it_is_given():
    html = render('{% task_item "add" a=1 b=2 %}')
    start = re.search(r'<button[^>]*data-tasks-live-action="start"[^>]*>', html).group(0)
    assert json.loads(attribute(start, "data-tasks-live-kwargs").replace("&quot;", '"')) == {
        "a": 1, "b": 2}
    assert "data-tasks-live-form" not in html  # nothing left to ask


def test_task_item_renders_a_form_for_missing_required_arguments():
    html = render('{% task_item "make-report" count=3 %}')
    form = re.search(r"<form[^>]*data-tasks-live-form[^>]*>.*?</form>", html, re.S).group(0)
    assert 'action="/tasks/start/make-report/"' in form and 'method="post"' in form
    inputs = {attribute(tag, "name"): tag for tag in re.findall(r"<input[^>]*>", form)}
    assert set(inputs) == {"csrfmiddlewaretoken", "next", "count", "title", "ratio", "urgent", "tags"}
    assert attribute(inputs["count"], "type") == "hidden"  # given by the tag
    assert "required" in inputs["title"] and attribute(inputs["title"], "data-tasks-live-type") == "str"
    assert attribute(inputs["ratio"], "step") == "any" and attribute(inputs["ratio"], "value") == "0.5"
    assert attribute(inputs["urgent"], "type") == "checkbox" and "checked" not in inputs["urgent"]
    assert attribute(inputs["tags"], "data-tasks-live-type") == "json"
    # Without JavaScript the Start button submits that form.
    start = re.search(r'<button[^>]*data-tasks-live-action="start"[^>]*>', html).group(0)
    assert attribute(start, "type") == "submit" and attribute(start, "form") == attribute(form, "id")


def test_handlers_without_required_arguments_get_no_form():
    assert "data-tasks-live-form" not in render('{% task_item "import-data" %}')


def test_task_item_refuses_arguments_the_handler_does_not_take():
    with pytest.raises(TemplateSyntaxError, match=r"task_item 'add': got an unexpected keyword"):
        render('{% task_item "add" c=1 %}')


def test_a_logged_out_visitor_is_offered_the_login_page_instead_of_start():
    html = render('{% task_item "noop" %}', user=AnonymousUser())
    login = re.search(r'<p class="tasks-live-item__login"[^>]*>.*?</p>', html, re.S).group(0)
    assert "hidden" not in login.split(">")[0]
    assert 'href="/accounts/login/?next=%2F"' in login
    assert re.search(r'<div class="tasks-live-item__actions" hidden>', html)
    staff = render('{% task_item "noop" %}')
    assert re.search(r'<p class="tasks-live-item__login" data-tasks-live-denied hidden>', staff)


def test_finished_cards_say_the_outcome_not_the_last_progress_message():
    import datetime as dt

    from django_tasks_live.models import Run

    run = tasks_live.start("sleepy")
    store.transition(run.pk, Status.RUNNING)
    store.save_progress(run.pk, progress_message="242s left")
    store.transition(run.pk, Status.CANCELED)
    started = store.get_run(run.pk).finished_at - dt.timedelta(seconds=65)
    Run.objects.filter(pk=run.pk).update(started_at=started)
    html = render("{% task_item run %}", run=store.get_run(run.pk))
    assert "242s left" not in html
    assert re.search(r"data-tasks-live-message>Canceled after 1 min 5 s<", html)
    assert re.search(r"data-tasks-live-when datetime=\"[^\"]+\">finished \d\d:\d\d:\d\d<", html)


def test_results_are_shown_readably():
    from django_tasks_live.templatetags.tasks_live import readable

    assert readable({"imported": 25, "ratio": 0.333333, "ok": True}) == "imported: 25\nratio: 0.333\nok: yes"
    with override_settings(TIME_ZONE="Europe/Paris"):
        # An epoch under a time key is a moment, in local time (the page's, once live).
        assert readable({"at": 1767225600.5}) == "at: 2026-01-01 01:00:00"
    assert readable([1, {"a": 1}]) == '1, {"a":1}'
    assert readable(2.0) == "2" and readable("text") == "text"


@pytest.mark.parametrize("seconds,text", [
    (0.25, "0.2 s"), (9.99, "9.9 s"), (42.7, "42 s"), (65, "1 min 5 s"), (120, "2 min"),
    (3600, "1 h"), (3725, "1 h 2 min"), (None, ""), (-1, ""),
])
def test_durations_read_like_the_client_writes_them(seconds, text):
    from django_tasks_live.templatetags.tasks_live import duration

    assert duration(seconds) == text


@pytest.mark.parametrize("login_url,expected", [
    ("admin:login", "/admin/login/"),  # a URL name, as the README sets it
    ("/accounts/login/", "/accounts/login/"),
    ("no-such-url-name", None),  # resolves nowhere: the client shows no login link
])
def test_the_client_config_carries_the_login_url_and_the_outcome_words(settings, login_url, expected):
    from django_tasks_live.templatetags.tasks_live import client_config

    settings.LOGIN_URL = login_url
    config = client_config()
    assert config["loginUrl"] == expected
    assert config["outcomes"]["completed"] == ("Done", "Done in {duration}")
