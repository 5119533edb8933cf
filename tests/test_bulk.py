"""Bulk cancel / rerun in batches (django_tasks_live.bulk, store.transition_many)."""

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import bulk, store
from django_tasks_live.models import RunEvent
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db


def test_transition_many_moves_only_allowed_runs_with_one_event_each():
    pending = [tasks_live.start("noop") for _ in range(3)]
    running = store.claim_run(tasks_live.start("noop").pk, "w")
    moved = store.transition_many([r.pk for r in [*pending, running]], Status.CANCELED,
                                  {Status.PENDING})
    assert sorted(r.pk for r in moved) == sorted(r.pk for r in pending)
    assert {store.get_run(r.pk).status for r in pending} == {Status.CANCELED}
    assert store.get_run(running.pk).status == Status.RUNNING
    for run in pending:
        event = RunEvent.objects.filter(run=run.pk).latest("id")
        assert (event.kind, event.status, event.data["status"]) == ("status", "canceled", "canceled")
        assert store.get_run(run.pk).finished_at is not None
    # A status the lifecycle does not allow as a source is never moved, whatever is asked.
    assert store.transition_many([running.pk], Status.PENDING, {Status.COMPLETED}) == []


def test_id_batches_walk_newest_first_without_repeats():
    runs = [tasks_live.start("noop") for _ in range(7)]
    batches = list(bulk.id_batches(store.runs(), 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [run_id for b in batches for run_id, _ in b] == [r.pk for r in reversed(runs)]


def test_cancel_matching_sorts_runs_by_what_happened():
    pending = tasks_live.start("noop")
    running = store.claim_run(tasks_live.start("noop").pk, "w")
    done = store.transition(store.claim_run(tasks_live.start("noop").pk, "w").pk, Status.COMPLETED)
    outcome = bulk.cancel_matching(store.runs())
    assert (outcome.done, outcome.requested, outcome.refused) == (
        [pending.pk], [running.pk], {"completed": [done.pk]})
    again = bulk.cancel_matching(store.runs(run_ids=[running.pk]))
    assert again.stopping == [running.pk]


def test_cancel_matching_stops_at_its_bound_and_says_more_remain():
    runs = [tasks_live.start("noop") for _ in range(5)]
    outcome = bulk.cancel_matching(store.runs(), max_runs=2)
    assert (len(outcome.done), outcome.remaining) == (2, True)
    assert outcome.done == [runs[-1].pk, runs[-2].pk]
    rest = bulk.cancel_matching(store.runs(status=[Status.PENDING]))
    assert (len(rest.done), rest.remaining) == (3, False)


def test_rerun_matching_inserts_linked_reruns_and_refuses_unfinished():
    finished = [store.transition(store.claim_run(tasks_live.start("add", a=i, b=1).pk, "w").pk,
                                 Status.FAILED) for i in range(3)]
    pending = tasks_live.start("noop")
    outcome = bulk.rerun_matching(store.runs(run_ids=[*(r.pk for r in finished), pending.pk]))
    assert sorted(outcome.done) == sorted(r.pk for r in finished)
    assert outcome.refused == {"pending": [pending.pk]}
    reruns = store.runs().filter(rerun_of__in=[r.pk for r in finished])
    assert sorted(r.kwargs["a"] for r in reruns) == [0, 1, 2]
    assert sorted(r.pk for r in reruns) == sorted(outcome.new_runs)


@pytest.mark.django_db(transaction=True)
def test_bulk_cancel_and_rerun_treat_a_flow_as_a_whole():
    parent = tasks_live.group(("noop", {}), ("noop", {"n": 1}))
    outcome = bulk.cancel_matching(store.runs(run_ids=[parent.pk]))
    assert outcome.done == [parent.pk]
    assert {r.status for r in store.runs()} == {Status.CANCELED}  # its children too
    again = bulk.rerun_matching(store.runs(run_ids=[parent.pk]))
    [new] = store.runs(run_ids=again.new_runs)
    assert (new.kind, new.rerun_of_id, new.status) == ("group", parent.pk, Status.RUNNING)
    assert store.runs().filter(parent=new).count() == 2


def test_bulk_rerun_of_a_unique_task_keeps_its_key():
    old = store.transition(store.claim_run(tasks_live.start("unique-sync", account=1).pk, "w").pk,
                           Status.FAILED)
    waiting = tasks_live.start("unique-sync", account=1)
    outcome = bulk.rerun_matching(store.runs(run_ids=[old.pk]))
    assert outcome.new_runs == [] and "already stands for its key" in outcome.errors[old.pk]
    assert store.runs().filter(task_name="unique-sync").exclude(pk=old.pk).get() == waiting
