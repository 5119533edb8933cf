"""The HTTP verbs on runs: start, cancel, rerun, state, and the per-status pages."""

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_user("staff", password="x", is_staff=True)
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
        ('{"a": NaN, "b": 1}', "JSON cannot represent"),
    ],
)
def test_bad_arguments_answer_400_with_the_reason(client, staff, body, reason):
    response = post_json(client, "/tasks/start/add/", raw=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not store.runs().exists()


def test_form_booleans_are_words(client, staff):
    response = client.post("/tasks/start/sleepy/", {"seconds": "0.5", "cooperative": "false"})
    assert store.get_run(response.json()["run"]["id"]).kwargs == {"seconds": 0.5, "cooperative": False}


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"rows": "many"}, "rows must be an integer, got 'many'."),
        ({"delay": "soon"}, "delay must be a number, got 'soon'."),
        ({"rows": "1", "colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_form_values_answer_400(client, staff, form, reason):
    response = client.post("/tasks/start/import-data/", form)
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_bad_form_booleans_answer_400(client, staff):
    response = client.post("/tasks/start/sleepy/", {"cooperative": "maybe"})
    assert response.json() == {"error": "cooperative must be a boolean (true/false), got 'maybe'."}


def test_unknown_task_answers_404_with_suggestions(client, staff):
    response = post_json(client, "/tasks/start/ad/", {})
    assert response.status_code == 404
    assert "Unknown task 'ad'" in response.json()["error"]


def test_start_needs_staff_or_the_start_permission(client, alice):
    assert post_json(client, "/tasks/start/noop/").status_code == 403
    with override_settings(TASKS_LIVE={"START_PERMISSION": "django_tasks_live.add_run"}):
        assert post_json(client, "/tasks/start/noop/").status_code == 403
        alice.user_permissions.add(Permission.objects.get(codename="add_run"))
        alice = User.objects.get(pk=alice.pk)  # drop the cached permissions
        client.force_login(alice)
        assert post_json(client, "/tasks/start/noop/").status_code == 201


def test_anonymous_cannot_start(client):
    assert post_json(client, "/tasks/start/noop/").status_code == 403


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
    old = finish(tasks_live.using(owner=alice).start("add", a=1, b=2), Status.FAILED)
    response = client.post(f"/tasks/runs/{old.pk}/rerun/")
    assert response.status_code == 201
    new = response.json()["run"]
    assert new["rerun_of"] == old.pk and new["status"] == "pending"
    assert store.get_run(new["id"]).kwargs == {"a": 1, "b": 2}


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
