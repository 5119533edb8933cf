"""The HTTP verbs on runs: start, cancel, rerun, state, and the per-status pages."""

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from tests.support.users import grant, operator

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    """An operator: staff with the permissions the admin's run pages need."""
    user = operator()
    client.force_login(user)
    return user


@pytest.fixture
def bare_staff(client):
    """Staff without any permission: the admin answers them 403, so do the endpoints."""
    user = User.objects.create_user("bare", password="x", is_staff=True)
    client.force_login(user)
    return user


@pytest.fixture
def alice(client):
    user = User.objects.create_user("alice", password="x")
    client.force_login(user)
    return user


def post_json(client, url, data=None, raw=None):
    body = raw if raw is not None else json.dumps(data or {})
    return client.post(url, body, content_type="application/json")


def finish(run, status=Status.COMPLETED):
    """Bring a pending run to ``status`` through the lifecycle, as a worker would."""
    store.transition(run.pk, Status.RUNNING)
    return store.transition(run.pk, status)


# ---------------------------------------------------------------- start


def test_staff_starts_a_task_with_json_kwargs(client, staff):
    response = post_json(client, "/tasks/start/add/", {"a": 2, "b": 3})
    assert response.status_code == 201
    state = response.json()["run"]
    assert state["task"] == "add" and state["status"] == "pending"
    run = store.get_run(state["id"])
    assert run.kwargs == {"a": 2, "b": 3}
    assert run.owner_id == staff.pk  # the starter owns the run


def test_form_fields_are_typed_by_the_handler_signature(client, staff):
    response = client.post("/tasks/start/import-data/", {"rows": "7", "delay": "0.5"})
    assert response.status_code == 201
    assert store.get_run(response.json()["run"]["id"]).kwargs == {"rows": 7, "delay": 0.5}


def test_form_post_with_a_safe_next_redirects(client, staff):
    response = client.post("/tasks/start/noop/", {"n": "1", "next": "/somewhere/"})
    assert response.status_code == 302 and response["Location"] == "/somewhere/"
    response = client.post("/tasks/start/noop/", {"n": "1", "next": "https://evil.example/"})
    assert response.status_code == 201  # an off-site next is ignored


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"a": 1}', "missing a required argument: 'b'"),
        ('{"a": 1, "b": 2, "c": 3}', "unexpected keyword argument 'c'"),
        ("[1, 2]", "must be an object"),
        ("{not json", "not valid JSON"),
        ('{"a": 1, "b": NaN}', "JSON cannot represent"),
        ('{"a": true, "b": 1}', "parameter 'a' expected int, got True (bool)."),
    ],
)
def test_bad_arguments_answer_400_with_the_reason(client, staff, body, reason):
    response = post_json(client, "/tasks/start/add/", raw=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not store.runs().exists()


def test_json_and_form_bodies_get_the_same_error_text(client, staff):
    expected = {"error": "Bad arguments for task 'typed': parameter \"box['width']\" expected int, "
                         "got '2' (str)."}
    response = post_json(client, "/tasks/start/typed/", {"mode": "fast", "box": {"width": "2"}})
    assert (response.status_code, response.json()) == (400, expected)
    response = client.post("/tasks/start/typed/", {"mode": "fast", "box": '{"width": "2"}'})
    assert (response.status_code, response.json()) == (400, expected)
    response = client.post("/tasks/start/typed/", {"mode": "fast", "box": '{"width": 2}', "tags": ["a", "b"]})
    assert store.get_run(response.json()["run"]["id"]).kwargs == {
        "mode": "fast", "box": {"width": 2}, "tags": ["a", "b"]}


def test_form_booleans_are_words(client, staff):
    response = client.post("/tasks/start/sleepy/", {"seconds": "0.5", "cooperative": "false"})
    assert store.get_run(response.json()["run"]["id"]).kwargs == {"seconds": 0.5, "cooperative": False}


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"rows": "many"}, "Bad arguments for task 'import-data': parameter 'rows' expected int, "
                           "got 'many' (str)."),
        ({"delay": "soon"}, "parameter 'delay' expected float, got 'soon' (str)."),
        ({"delay": "nan"}, "JSON cannot represent"),
        ({"rows": "1", "colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_form_values_answer_400(client, staff, form, reason):
    response = client.post("/tasks/start/import-data/", form)
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_bad_form_booleans_answer_400(client, staff):
    response = client.post("/tasks/start/sleepy/", {"cooperative": "maybe"})
    assert response.json() == {"error": "Bad arguments for task 'sleepy': parameter 'cooperative' "
                                        "expected bool, got 'maybe' (str)."}


def test_unknown_task_answers_404_with_suggestions(client, staff):
    response = post_json(client, "/tasks/start/ad/", {})
    assert response.status_code == 404
    assert "Unknown task 'ad'" in response.json()["error"]


def test_start_needs_the_add_run_permission_by_default(client, alice, bare_staff):
    assert post_json(client, "/tasks/start/noop/").status_code == 403  # staff alone: no
    client.force_login(alice)
    assert post_json(client, "/tasks/start/noop/").status_code == 403
    client.force_login(grant(alice, "add_run"))
    assert post_json(client, "/tasks/start/noop/").status_code == 201


def test_start_permission_replaces_add_run(client, alice):
    client.force_login(grant(alice, "add_run"))
    with override_settings(TASKS_LIVE={"START_PERMISSION": "django_tasks_live.change_task"}):
        assert post_json(client, "/tasks/start/noop/").json() == {
            "error": "You may not start 'noop'."}
        client.force_login(grant(alice, "change_task"))
        assert post_json(client, "/tasks/start/noop/").status_code == 201


def test_a_superuser_may_do_everything(client):
    client.force_login(User.objects.create_superuser("root", password="x"))
    run = finish(tasks_live.start("noop"))
    assert post_json(client, "/tasks/start/noop/").status_code == 201
    assert client.get(f"/tasks/runs/{run.pk}/").status_code == 200
    assert client.post(f"/tasks/runs/{run.pk}/rerun/").status_code == 201


def test_anonymous_start_asks_to_log_in_and_come_back_to_the_page(client):
    # The client's fetch: 401 with where to log in, coming back to the page (the Referer).
    response = client.post("/tasks/start/noop/", "{}", content_type="application/json",
                           HTTP_REFERER="http://testserver/reports/?tab=2")
    assert response.status_code == 401
    assert response.json() == {"error": "Log in to start tasks.",
                               "login_url": "/accounts/login/?next=/reports/%3Ftab%3D2"}
    # A plain form post: redirected to log in, then back to its `next` page, never to this
    # POST-only URL (a GET of it after login answered 405).
    form = client.post("/tasks/start/noop/", {"next": "/reports/"})
    assert form.status_code == 302 and form["Location"] == "/accounts/login/?next=/reports/"
    # Another site's page is not a place to come back to.
    other = client.post("/tasks/start/noop/", {"next": "https://evil.example/"})
    assert other["Location"] == "/accounts/login/?next=/"
    assert Run.objects.count() == 0


@pytest.mark.parametrize("login", [None, "alice", "bare_staff"])
def test_who_may_not_start_learns_no_task_names(client, request, login):
    if login:
        request.getfixturevalue(login)
    response = post_json(client, "/tasks/start/no-such-task/")
    if login is None:  # logged out: asked to log in first
        assert response.status_code == 401 and response.json()["error"] == "Log in to start tasks."
    else:
        assert response.status_code == 403
        assert response.json() == {"error": "You may not start 'no-such-task'."}
    assert "noop" not in response.content.decode()  # authorised before the look-up


@pytest.mark.parametrize(("raw", "reason"), [
    ("[" * 990 + "]" * 990, "is nested more than 100 levels deep"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "The body is nested more than 100 levels deep"),
    ('{"payload": "x\\ud800y"}', r"The body['payload'] contains a lone surrogate (\ud800 at position 1)"),
    ('{"payload": "x\\u0000y"}', "contains a NUL character"),
])
def test_unstorable_json_answers_400_with_the_reason(client, staff, raw, reason):
    response = post_json(client, "/tasks/start/echo/", raw=raw)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not store.runs().exists()


@pytest.mark.parametrize("path", ["/tasks/nope/", "/tasks/runs/abc/", "/tasks/runs/-1/cancel/",
                                  "/tasks/start/", "/tasks/runs/1/delete/"])
def test_other_urls_under_the_endpoints_answer_json_404s(client, staff, path):
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 404 and response["Content-Type"] == "application/json"
        assert response.json() == {"error": f"No endpoint at {path!r}."}


def test_verbs_only_answer_post(client, staff):
    assert client.get("/tasks/start/noop/").status_code == 405
    run = tasks_live.start("noop")
    assert client.get(f"/tasks/runs/{run.pk}/cancel/").status_code == 405


def test_posts_need_the_csrf_token(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert post_json(client, "/tasks/start/noop/").status_code == 403
    client.get("/tasks/runs/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/tasks/start/noop/", "{}", content_type="application/json",
                           headers={"X-CSRFToken": token})
    assert response.status_code == 201


@pytest.mark.parametrize("verb", ["cancel", "rerun"])
def test_every_run_verb_needs_post_and_the_csrf_token(staff, verb):
    """Held up in the probe: keep it so. No GET, no POST without the token, and
    neither changes anything."""
    run = finish(tasks_live.start("noop"), Status.FAILED) if verb == "rerun" else tasks_live.start("noop")
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    url = f"/tasks/runs/{run.pk}/{verb}/"
    assert client.get(url).status_code == 405
    for method in (client.put, client.delete):  # unsafe: the CSRF check answers first
        assert method(url).status_code == 403
    assert client.post(url).status_code == 403  # CSRF
    assert store.runs().count() == 1 and store.get_run(run.pk).status == run.status
    client.get("/tasks/runs/")
    response = client.post(url, headers={"X-CSRFToken": client.cookies["csrftoken"].value})
    assert response.status_code == (201 if verb == "rerun" else 200)


# ---------------------------------------------------------------- one run


def test_owner_cancels_their_pending_run(client, alice):
    run = tasks_live.using(owner=alice).start("noop")
    response = client.post(f"/tasks/runs/{run.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "canceled"


def test_cancel_of_a_running_run_asks_it_to_stop(client, staff):
    run = tasks_live.start("noop")
    store.transition(run.pk, Status.RUNNING)
    response = client.post(f"/tasks/runs/{run.pk}/cancel/")
    assert response.json()["run"]["status"] == "cancel_requested"


def test_cancel_of_a_finished_run_is_a_conflict(client, staff):
    run = finish(tasks_live.start("noop"))
    response = client.post(f"/tasks/runs/{run.pk}/cancel/")
    assert response.status_code == 409
    assert response.json()["error"] == f"Run {run.pk} is completed and cannot be canceled."


def test_strangers_cannot_see_or_act_on_a_run(client, alice):
    bob = User.objects.create_user("bob")
    run = tasks_live.using(owner=bob).start("noop")
    for response in (client.get(f"/tasks/runs/{run.pk}/"),
                     client.post(f"/tasks/runs/{run.pk}/cancel/"),
                     client.post(f"/tasks/runs/{run.pk}/rerun/")):
        assert response.status_code == 403
    assert store.get_run(run.pk).status == Status.PENDING


def test_run_detail_answers_the_public_state(client, alice):
    run = tasks_live.using(owner=alice).start("add", a=1, b=2)
    assert client.get(f"/tasks/runs/{run.pk}/").json() == {"run": run.to_state()}


@pytest.mark.parametrize("run_id", ["0", "999", str(2**70)])
def test_missing_runs_answer_404(client, staff, run_id):
    response = client.post(f"/tasks/runs/{run_id}/cancel/")
    assert response.status_code == 404
    assert response.json()["error"] == f"Run {run_id} does not exist."


def test_rerun_starts_a_linked_copy(client, alice):
    client.force_login(grant(alice, "add_run"))
    old = finish(tasks_live.using(owner=alice).start("add", a=1, b=2), Status.FAILED)
    response = client.post(f"/tasks/runs/{old.pk}/rerun/")
    assert response.status_code == 201
    new = response.json()["run"]
    assert new["rerun_of"] == old.pk and new["status"] == "pending"
    assert store.get_run(new["id"]).kwargs == {"a": 1, "b": 2}


def test_the_start_permission_gates_rerun(client, alice):
    old = finish(tasks_live.using(owner=alice).start("noop"), Status.FAILED)
    for _ in range(3):  # the owner, without it, reruns nothing, however often they ask
        response = client.post(f"/tasks/runs/{old.pk}/rerun/")
        assert response.status_code == 403
        assert response.json() == {"error": f"You may not start 'noop', so not rerun run {old.pk}."}
    assert store.runs().count() == 1
    with override_settings(TASKS_LIVE={"START_PERMISSION": "django_tasks_live.change_task"}):
        client.force_login(grant(alice, "change_task"))
        assert client.post(f"/tasks/runs/{old.pk}/rerun/").status_code == 201


def test_staff_without_permissions_see_and_do_nothing_of_others(client, bare_staff):
    other = finish(tasks_live.start("noop"))
    pending = tasks_live.start("noop")
    for response in (client.get(f"/tasks/runs/{other.pk}/"),
                     client.post(f"/tasks/runs/{pending.pk}/cancel/"),
                     client.post(f"/tasks/runs/{other.pk}/rerun/")):
        assert response.status_code == 403
    html = client.get("/tasks/runs/").content.decode()
    assert f'data-tasks-live-run="{other.pk}"' not in html
    assert f'data-tasks-live-run="{pending.pk}"' not in html
    assert store.get_run(pending.pk).status == Status.PENDING and store.runs().count() == 2


def test_view_run_sees_every_run_but_cancels_none(client, alice):
    client.force_login(grant(alice, "view_run"))
    run = tasks_live.start("noop")
    assert client.get(f"/tasks/runs/{run.pk}/").json() == {"run": run.to_state()}
    assert f'data-tasks-live-run="{run.pk}"' in client.get("/tasks/runs/").content.decode()
    assert client.post(f"/tasks/runs/{run.pk}/cancel/").status_code == 403
    client.force_login(grant(alice, "change_run"))
    assert client.post(f"/tasks/runs/{run.pk}/cancel/").json()["run"]["status"] == "canceled"
    # ...and a second cancel (a double click, a racing tab) answers the same.
    assert client.post(f"/tasks/runs/{run.pk}/cancel/").json()["run"]["status"] == "canceled"


def test_rerun_of_an_unfinished_run_is_a_conflict(client, staff):
    run = tasks_live.start("noop")
    response = client.post(f"/tasks/runs/{run.pk}/rerun/")
    assert response.status_code == 409
    assert "only finished runs can be rerun" in response.json()["error"]


# ---------------------------------------------------------------- pages


def test_status_page_lists_the_runs_of_that_status(client, staff):
    running = tasks_live.start("add", a=1, b=2)
    store.transition(running.pk, Status.RUNNING)
    pending = tasks_live.start("noop")
    response = client.get("/tasks/runs/?status=running")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-tasks-live-run="{running.pk}"' in html
    assert f'data-tasks-live-run="{pending.pk}"' not in html
    assert 'data-tasks-live-list-status="running"' in html
    assert "data-tasks-live-stream" in html


def test_status_page_rejects_unknown_statuses(client, staff):
    response = client.get("/tasks/runs/?status=<b>bogus</b>")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert "Unknown status '<b>bogus</b>'" in response.content.decode()


def test_status_page_shows_users_only_their_runs(client, alice):
    mine = tasks_live.using(owner=alice).start("noop")
    theirs = tasks_live.start("noop")
    html = client.get("/tasks/runs/").content.decode()
    assert f'data-tasks-live-run="{mine.pk}"' in html
    assert f'data-tasks-live-run="{theirs.pk}"' not in html


def test_status_page_needs_a_login(client):
    assert client.get("/tasks/runs/").status_code == 403


def test_runs_page_filters_by_task_and_label_with_the_api_error_text(client, staff):
    acme = tasks_live.using(labels={"tenant": "acme"}).start("noop")
    other = tasks_live.start("noop")
    added = tasks_live.using(labels={"tenant": "acme"}).start("add", a=1, b=2)
    html = client.get("/tasks/runs/?task=noop&label=tenant:acme").content.decode()
    assert f'data-tasks-live-run="{acme.pk}"' in html
    assert f'data-tasks-live-run="{other.pk}"' not in html
    assert f'data-tasks-live-run="{added.pk}"' not in html
    assert 'href="?status=running&amp;task=noop&amp;label=tenant%3Aacme"' in html
    response = client.get("/tasks/runs/?status=done")
    assert response.status_code == 400
    assert response.content.decode().startswith("Unknown status 'done'; use one of: pending, ")
    assert client.get("/tasks/runs/?label=nocolon").status_code == 400
