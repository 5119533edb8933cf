"""Bulk Cancel / Rerun: confirmation page, all matching the filter, messages in words."""

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import bulk, store
from django_tasks_live.states import Status
from tests.admin.helpers import RUNS, make_run, messages_of

pytestmark = pytest.mark.django_db


def act(client, action, ids, confirm=True, across=False, query=""):
    data = {"action": action, "_selected_action": ids, "index": "0"}
    if confirm:
        data["tl_confirm"] = "yes"
    if across:
        data["select_across"] = "1"
    return client.post(RUNS + query, data, follow=confirm)


def test_an_action_first_asks_for_confirmation_saying_how_many(admin_client):
    runs = [make_run(Status.PENDING) for _ in range(3)]
    response = act(admin_client, "cancel_runs", [r.pk for r in runs[:2]], confirm=False)
    assert response.status_code == 200
    content = response.content.decode()
    assert "Cancel <strong>2 runs</strong>?" in content
    assert 'name="tl_confirm" value="yes"' in content
    assert all(store.get_run(r.pk).status == Status.PENDING for r in runs)  # nothing done yet


def test_cancel_in_words_canceled_requested_stopping_and_left_alone(admin_client):
    pending, running = make_run(Status.PENDING), make_run(Status.RUNNING)
    stopping, done = make_run(Status.CANCEL_REQUESTED), make_run(Status.COMPLETED)
    response = act(admin_client, "cancel_runs", [pending.pk, running.pk, stopping.pk, done.pk])
    assert response.status_code == 200
    assert store.get_run(pending.pk).status == Status.CANCELED
    assert store.get_run(running.pk).status == Status.CANCEL_REQUESTED
    assert store.get_run(done.pk).status == Status.COMPLETED
    msgs = messages_of(response)
    assert any(m.startswith("Canceled 1 run that had not started") and f"#{pending.pk}" in m
               for m in msgs), msgs
    assert any(m.startswith("Cancel requested for 1 running run") and f"#{running.pk}" in m
               for m in msgs), msgs
    assert any("1 run already asked to stop" in m for m in msgs), msgs
    assert any(m.startswith("Left 1 run as they are (it is completed; a finished run cannot be "
                            "canceled)") for m in msgs), msgs
    assert not any("cannot move from" in m for m in msgs)  # no lifecycle jargon


def test_cancel_all_matching_touches_exactly_the_filtered_runs(admin_client):
    adds = [tasks_live.start("add", a=i, b=1) for i in range(7)]
    noops = [tasks_live.start("noop") for _ in range(3)]
    response = act(admin_client, "cancel_runs", [adds[-1].pk], across=True, query="?task=add")
    assert response.status_code == 200
    assert {store.get_run(r.pk).status for r in adds} == {Status.CANCELED}
    assert {store.get_run(r.pk).status for r in noops} == {Status.PENDING}
    assert any(m.startswith("Canceled 7 runs") for m in messages_of(response))
    # One event per canceled run, like a single cancel.
    assert all(store.run_events(r.pk, 5)[0].status == Status.CANCELED for r in adds)


def test_all_matching_confirmation_counts_the_filter_not_the_selection(admin_client):
    adds = [tasks_live.start("add", a=i, b=1) for i in range(4)]
    tasks_live.start("noop")
    response = act(admin_client, "cancel_runs", [adds[0].pk], confirm=False, across=True,
                   query="?task=add")
    content = response.content.decode()
    assert "Cancel <strong>4 runs</strong> — every run matching the current filter?" in content
    assert 'name="select_across" value="1"' in content
    assert "task: <code>add</code>" in content


def test_bulk_work_is_bounded_per_request_and_says_so(admin_client, monkeypatch):
    monkeypatch.setattr(bulk, "MAX_RUNS", 3)
    monkeypatch.setattr(bulk, "BATCH_SIZE", 2)
    runs = [tasks_live.start("noop") for _ in range(5)]
    response = act(admin_client, "cancel_runs", [runs[0].pk], across=True)
    statuses = [store.get_run(r.pk).status for r in runs]
    assert statuses.count(Status.CANCELED) == 3 and statuses[-3:] == [Status.CANCELED] * 3
    msgs = messages_of(response)
    assert any("Canceled 3 runs" in m for m in msgs), msgs
    assert any("more runs match" in m and "again to continue" in m for m in msgs), msgs


def test_a_large_cancel_names_a_few_runs_not_all(admin_client):
    runs = [tasks_live.start("noop") for _ in range(25)]
    response = act(admin_client, "cancel_runs", [r.pk for r in runs])
    msgs = messages_of(response)
    assert len(msgs) == 1
    assert msgs[0].startswith("Canceled 25 runs") and "and 15 more" in msgs[0]


def test_rerun_starts_linked_runs_and_leaves_unfinished_ones(admin_client):
    failed, running = make_run(Status.FAILED, "add", a=1, b=2), make_run(Status.RUNNING)
    response = act(admin_client, "rerun_runs", [failed.pk, running.pk])
    assert response.status_code == 200
    rerun = store.runs().filter(rerun_of=failed.pk).get()
    assert (rerun.status, rerun.kwargs) == (Status.PENDING, {"a": 1, "b": 2})
    assert not store.runs().filter(rerun_of=running.pk).exists()
    msgs = messages_of(response)
    assert any(m.startswith("Started 1 rerun") and f"#{rerun.pk}" in m for m in msgs), msgs
    assert any("it is running; only finished runs can be rerun" in m for m in msgs), msgs
