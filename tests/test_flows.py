"""Chains and groups: the pure decisions (flows.decide), then flows driven through the
store and runner on the real database."""

import pytest
from django.db import connection

import django_tasks_live as tasks_live
from django_tasks_live import flows, runner, store
from django_tasks_live.models import Run
from django_tasks_live.states import IllegalTransition, Status

ENTRY = {"task_name": "t", "args": [], "kwargs": {}}


def chain_plan(n):
    return flows.plan(flows.CHAIN, [{**ENTRY, "task_name": f"t{i}"} for i in range(n)], None)


def child(position, status, result=None, error="", task=None):
    return flows.Child(100 + position, position, task or f"t{position}", status, result, error)


# ---------------------------------------------------------------- decisions


def test_a_chain_creates_the_next_step_with_the_previous_result():
    decision = flows.decide("c", 1, chain_plan(3), [child(0, Status.COMPLETED, 5)])
    assert [(pos, entry["task_name"], first) for pos, entry, first in decision.create] == [(1, "t1", [5])]
    assert decision.finish is None
    assert [s["state"] for s in decision.steps] == ["done", "pending", "pending"]
    assert (decision.percent, decision.message) == (33.33, "1 of 3 steps done")


def test_a_chain_step_that_exists_is_not_created_again():
    children = [child(0, Status.COMPLETED, 5), child(1, Status.PENDING)]
    assert flows.decide("c", 1, chain_plan(3), children).create == []


def test_the_last_chain_step_completes_the_chain_with_its_result():
    children = [child(0, Status.COMPLETED, 1), child(1, Status.COMPLETED, 2)]
    decision = flows.decide("c", 1, chain_plan(2), children)
    assert (decision.finish, decision.fields) == (Status.COMPLETED, {"result": 2})


def test_a_failed_step_fails_the_chain_naming_it_and_cancels_the_rest():
    children = [child(0, Status.COMPLETED, 1), child(1, Status.FAILED, error="ValueError: boom")]
    decision = flows.decide("nightly", 7, chain_plan(3), children)
    assert decision.finish == Status.FAILED
    assert decision.fields == {
        "error": "Chain 'nightly' (run 7) stopped at step 2 of 3: task 't1' (run 101) failed: "
                 "ValueError: boom",
        "error_type": "ChainFailed"}
    assert [s["state"] for s in decision.steps] == ["done", "failed", "canceled"]


def test_a_skipped_step_stops_the_chain_as_a_failure_would():
    decision = flows.decide("nightly", 7, chain_plan(2), [child(0, Status.SKIPPED)])
    assert (decision.finish, decision.create) == (Status.FAILED, [])
    assert decision.fields["error"] == ("Chain 'nightly' (run 7) stopped at step 1 of 2: "
                                        "task 't0' (run 100) skipped")
    assert [s["state"] for s in decision.steps] == ["skipped", "canceled"]


def test_a_group_waits_for_every_member_then_starts_its_join_with_the_results():
    group = flows.plan(flows.GROUP, [ENTRY, ENTRY], {**ENTRY, "task_name": "join"})
    waiting = flows.decide("g", 1, group, [child(0, Status.COMPLETED, 1), child(1, Status.RUNNING)])
    assert waiting.create == [] and waiting.finish is None
    ready = flows.decide("g", 1, group, [child(1, Status.COMPLETED, 2), child(0, Status.COMPLETED, 1)])
    assert [(pos, entry["task_name"], first) for pos, entry, first in ready.create] == [(2, "join", [[1, 2]])]
    joined = flows.decide("g", 1, group, [child(0, Status.COMPLETED, 1), child(1, Status.COMPLETED, 2),
                                          child(2, Status.COMPLETED, 3)])
    assert (joined.finish, joined.fields) == (Status.COMPLETED, {"result": 3})


def test_a_group_without_a_join_completes_with_the_list_of_results():
    group = flows.plan(flows.GROUP, [ENTRY, ENTRY], None)
    decision = flows.decide("g", 1, group, [child(0, Status.COMPLETED, "a"), child(1, Status.COMPLETED, "b")])
    assert (decision.finish, decision.fields) == (Status.COMPLETED, {"result": ["a", "b"]})


def test_a_canceled_member_cancels_the_group_and_its_open_siblings():
    group = flows.plan(flows.GROUP, [ENTRY, ENTRY, ENTRY], None)
    children = [child(0, Status.CANCELED), child(1, Status.RUNNING), child(2, Status.COMPLETED, 1)]
    decision = flows.decide("g", 1, group, children)
    assert decision.finish == Status.CANCELED and decision.cancel == [101]
    assert "step 1 of 3: task 't0' (run 100) was canceled" in decision.fields["error"]


# ---------------------------------------------------------------- on the database

db = pytest.mark.django_db(transaction=True)  # sibling cancels run after commit


def drive(parent: Run, limit: int = 50) -> Run:
    """Execute due children (as a worker would) until the flow ends."""
    for _ in range(limit):
        parent = Run.objects.get(pk=parent.pk)
        if parent.is_finished:
            return parent
        claimed = store.claim("w1", None, limit=10)
        assert claimed, f"flow {parent.pk} is {parent.status} with nothing to run"
        for run in claimed:
            runner.execute(run.pk, "w1", run=run)
    raise AssertionError("the flow did not end")


@db
def test_a_chain_passes_each_result_to_the_next_call():
    parent = tasks_live.using(labels={"tenant": "acme"}).chain(
        ("add", {"a": 1, "b": 2}), "double", ("add", {"b": 10}), name="pipeline")
    assert (parent.status, parent.kind, parent.task_name) == (Status.RUNNING, "chain", "pipeline")
    assert Run.objects.filter(parent=parent).count() == 1  # later steps start when it is their turn
    done = drive(parent)
    assert (done.status, done.result, done.percent) == (Status.COMPLETED, 16, 100.0)
    children = list(Run.objects.filter(parent=parent).order_by("position"))
    assert [(c.task_name, c.args, c.kwargs, c.result) for c in children] == [
        ("add", [], {"a": 1, "b": 2}, 3), ("double", [3], {}, 6), ("add", [6], {"b": 10}, 16)]
    assert all(c.labels == {"tenant": "acme"} for c in children)
    assert [(s["name"], s["state"], s["run"]) for s in done.steps] == [
        ("1. add", "done", children[0].pk), ("2. double", "done", children[1].pk),
        ("3. add", "done", children[2].pk)]
    assert done.to_state()["parent"] is None and children[1].to_state()["parent"] == parent.pk


@db
def test_a_group_runs_in_parallel_and_its_join_gets_the_results_in_call_order():
    parent = tasks_live.group(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}),
                              ("double", [5], {}), then=("total", {"bonus": 100}))
    assert Run.objects.filter(parent=parent).count() == 3  # all members at once
    done = drive(parent)
    assert (done.status, done.result) == (Status.COMPLETED, 116)
    join = Run.objects.get(parent=parent, position=3)
    assert (join.task_name, join.args, join.kwargs) == ("total", [[2, 4, 10]], {"bonus": 100})


@db
def test_a_chain_failure_names_the_chain_task_and_step_and_starts_nothing_more():
    parent = tasks_live.chain(("add", {"a": 1, "b": 2}), "explode", "double", name="nightly")
    done = drive(parent)
    failing = Run.objects.get(parent=parent, position=1)
    assert done.status == Status.FAILED and done.error_type == "ChainFailed"
    assert done.error == (f"Chain 'nightly' (run {parent.pk}) stopped at step 2 of 3: task 'explode' "
                          f"(run {failing.pk}) failed: boom")
    assert Run.objects.filter(parent=parent).count() == 2
    assert [s["state"] for s in done.steps] == ["done", "failed", "canceled"]


@db
def test_a_group_failure_cancels_the_members_still_open():
    parent = tasks_live.group("explode", ("sleepy", {"seconds": 30}), ("noop", {}))
    explode = Run.objects.get(parent=parent, position=0)
    runner.execute(explode.pk, "w1")
    done = Run.objects.get(pk=parent.pk)
    assert done.status == Status.FAILED and "task 'explode'" in done.error
    assert set(Run.objects.filter(parent=parent).values_list("status", flat=True)) == {
        Status.FAILED, Status.CANCELED}


@db
def test_canceling_the_parent_cancels_waiting_children_and_stops_running_ones():
    parent = tasks_live.group(("noop", {}), ("sleepy", {"seconds": 30}))
    running = store.claim_run(Run.objects.get(parent=parent, position=1).pk, "w1")
    canceled = tasks_live.cancel(parent)
    assert canceled.status == Status.CANCELED
    assert [s["state"] for s in canceled.steps] == ["canceled", "canceled"]
    statuses = dict(Run.objects.filter(parent=parent).values_list("position", "status"))
    assert statuses == {0: Status.CANCELED, 1: Status.CANCEL_REQUESTED}
    # The running child stops at its next check; the flow stays canceled.
    assert runner.execute(running.pk, "w1", run=running).status == Status.CANCELED
    assert Run.objects.get(pk=parent.pk).status == Status.CANCELED
    with pytest.raises(IllegalTransition):
        tasks_live.cancel(parent)


@db
def test_a_flow_is_rerun_from_its_plan_and_never_rescued_as_a_lost_run():
    parent = tasks_live.chain(("add", {"a": 2, "b": 3}), "double")
    assert store.recover_lost_runs(heartbeat_timeout=0.0) == []  # no worker holds a parent
    done = drive(parent)
    again = drive(tasks_live.rerun(done))
    assert (again.rerun_of_id, again.result, again.task_name) == (done.pk, 10, "chain")


@db
def test_pruning_a_flow_keeps_the_rest_consistent():
    assert drive(tasks_live.chain(("add", {"a": 1, "b": 1}), "double")).status == Status.COMPLETED
    assert store.prune(keep_last=0, days=None)["runs"] == 3
    assert not Run.objects.exists()
    connection.check_constraints()


@pytest.mark.django_db
@pytest.mark.parametrize("call, error, message", [
    (lambda: tasks_live.chain(), ValueError, "A chain needs at least one call"),
    (lambda: tasks_live.chain(("add", {"a": 1, "b": 2}), ("add", {"a": 1, "b": 2})), TypeError,
     "Bad arguments for task 'add'"),  # the second also gets the first's result
    (lambda: tasks_live.group("double"), TypeError, "Bad arguments for task 'double'"),
    (lambda: tasks_live.group("noop", then=("add", {"a": 1, "b": 2})), TypeError,
     "Bad arguments for task 'add'"),  # the join gets the results as its first argument
    (lambda: tasks_live.chain("nope"), Exception, "Unknown task 'nope'"),
    (lambda: tasks_live.chain(("add", "ab", {})), TypeError, r"calls\[0\] args must be a list"),
    (lambda: tasks_live.chain("unique-args"), ValueError, "is unique, debounced or run-once"),
    (lambda: tasks_live.chain("noop", name=""), ValueError, "name must be a non-empty string"),
])
def test_bad_flows_are_refused_before_anything_is_written(call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert not Run.objects.exists()
