"""The persistence layer: guarded transitions, events, claims, recovery."""

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from django_tasks_live import events, store
from django_tasks_live.models import Run, RunEvent, Worker
from django_tasks_live.states import IllegalTransition, Status

pytestmark = pytest.mark.django_db


def new(task: str = "noop", **fields) -> Run:
    return store.create_runs([store.NewRun(task_name=task, **fields)])[0]


def kinds(run: Run) -> list[tuple[str, str]]:
    return list(RunEvent.objects.filter(run=run).order_by("id").values_list("kind", "status"))


def running(worker: str = "w1", **fields) -> Run:
    run = new(**fields)
    return store.claim_run(run.pk, worker)


def worker(worker_id: str, seconds_ago: float = 0.0, stopped: bool = False) -> Worker:
    w = store.register_worker(worker_id, "host", 1, ["default"], 1)
    at = timezone.now() - dt.timedelta(seconds=seconds_ago)
    Worker.objects.filter(pk=worker_id).update(heartbeat_at=at, stopped_at=at if stopped else None)
    return w


# ---------------------------------------------------------------- creating and transitions


def test_create_runs_inserts_pending_runs_with_a_created_event():
    runs = store.create_runs([store.NewRun(task_name="noop", kwargs={"n": i}) for i in range(3)])
    assert [r.status for r in runs] == [Status.PENDING] * 3
    assert all(kinds(r) == [("created", "pending")] for r in runs)
    event = RunEvent.objects.get(run=runs[0])
    assert event.data == runs[0].to_state()
    assert event.data["status"] == "pending" and event.data["task"] == "noop"


def test_a_run_loaded_with_its_state_fields_only_makes_its_event_without_a_query(
        django_assert_num_queries):
    full = new(labels={"tenant": "acme"})
    [partial] = Run.objects.filter(pk=full.pk).only(*Run.STATE_FIELDS)
    with django_assert_num_queries(0):
        state = partial.to_state()
        message = events.message(1, "progress", state, partial.owner_id)
        flags = (partial.limited, partial.parent_id)
    assert state == full.to_state() and message["run"] == state and flags == (0, None)


def test_create_run_once_respects_the_active_unique_key():
    first = store.create_run_once(store.NewRun(task_name="noop", unique_key="k"))
    assert first is not None
    assert store.create_run_once(store.NewRun(task_name="noop", unique_key="k")) is None
    store.transition(first.pk, Status.CANCELED)
    assert store.create_run_once(store.NewRun(task_name="noop", unique_key="k")) is not None


def test_transition_saves_fields_and_appends_a_status_event():
    run = running()
    done = store.transition(run.pk, Status.COMPLETED, result={"ok": True})
    assert done.status == Status.COMPLETED and done.finished_at is not None
    stored = Run.objects.get(pk=run.pk)
    assert (stored.status, stored.result) == (Status.COMPLETED, {"ok": True})
    assert kinds(run) == [("created", "pending"), ("status", "running"), ("status", "completed")]
    last = RunEvent.objects.filter(run=run).last()
    assert last.data["result"] == {"ok": True}


@pytest.mark.parametrize("start,target", [
    (Status.PENDING, Status.COMPLETED),
    (Status.COMPLETED, Status.RUNNING),
    (Status.CANCELED, Status.PENDING),
    (Status.PENDING, Status.TIMED_OUT),
])
def test_illegal_transition_raises_and_writes_nothing(start, target):
    run = new()
    Run.objects.filter(pk=run.pk).update(status=start)
    before = Run.objects.get(pk=run.pk)
    events_before = RunEvent.objects.count()
    with pytest.raises(IllegalTransition, match=f"cannot move from '{start}' to '{target}'"):
        store.transition(run.pk, target, result=42, error="should not stick")
    after = Run.objects.get(pk=run.pk)
    assert (after.status, after.result, after.error, after.updated_at) == (
        before.status, before.result, before.error, before.updated_at)
    assert RunEvent.objects.count() == events_before
    assert store.transition_if(run.pk, target) is None


def test_transition_of_a_missing_run_is_a_clear_error():
    with pytest.raises(Run.DoesNotExist, match="Run 999999 does not exist"):
        store.transition(999999, Status.CANCELED)


def test_events_are_pushed_only_after_commit(monkeypatch, django_capture_on_commit_callbacks):
    pushed = []
    monkeypatch.setattr(events.pusher, "push", lambda batch, hold=0.0: pushed.extend(batch))
    with django_capture_on_commit_callbacks(execute=True):
        run = new()
        assert pushed == []  # not before the transaction commits
    assert [(m["type"], m["kind"], m["run"]["id"]) for m in pushed] == [
        ("tasks_live.event", "created", run.pk)]
    assert pushed[0]["id"] == RunEvent.objects.get(run=run).pk


def test_save_progress_writes_active_runs_only():
    run = running()
    assert store.save_progress(run.pk, progress_message="half", percent=50.0) == Status.RUNNING
    assert Run.objects.get(pk=run.pk).percent == 50.0
    assert kinds(run)[-1] == ("progress", "running")
    store.transition(run.pk, Status.COMPLETED)
    count = RunEvent.objects.count()
    assert store.save_progress(run.pk, percent=75.0) == Status.COMPLETED
    assert Run.objects.get(pk=run.pk).percent == 50.0 and RunEvent.objects.count() == count
    assert store.save_progress(424242, percent=1.0) is None


def test_save_progress_reports_a_cancel_request():
    run = running()
    store.transition(run.pk, Status.CANCEL_REQUESTED)
    assert store.save_progress(run.pk, percent=10.0) == Status.CANCEL_REQUESTED


# ---------------------------------------------------------------- claiming


def test_claim_order_is_priority_then_run_after_then_fifo():
    now = timezone.now()
    low = new(priority=-5)
    fifo_1 = new(run_after=now - dt.timedelta(seconds=10))
    fifo_2 = new(run_after=now - dt.timedelta(seconds=10))
    older = new(run_after=now - dt.timedelta(seconds=60))
    urgent = new(priority=10)
    claimed = store.claim("w1", None, limit=10)
    assert [r.pk for r in claimed] == [urgent.pk, older.pk, fifo_1.pk, fifo_2.pk, low.pk]


@pytest.mark.parametrize(("queues", "index"), [
    (None, store.CLAIM_ANY_INDEX),
    (["default"], store.CLAIM_INDEX),
    (["default", "other"], store.CLAIM_ANY_INDEX),
])
def test_a_claim_reads_a_claim_index_in_order_instead_of_sorting_the_backlog(queues, index):
    # A fresh table without statistics, as after a deploy: the planner then read every
    # due run of a PostgreSQL backlog this size and sorted them, for every claim.
    backlog = 20_000 if connection.vendor == "postgresql" else 200
    store.create_runs([store.NewRun(task_name="noop", queue=q)
                       for q in ["default", "other"] * (backlog // 2)])
    plan = store.claim_plan(queues, limit=50)
    assert index in plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_claim_takes_a_batch_marks_it_claimed_and_counts_the_attempt():
    runs = [new() for _ in range(5)]
    first = store.claim("w1", None, limit=3)
    second = store.claim("w2", None, limit=3)
    assert [r.pk for r in first] == [r.pk for r in runs[:3]]
    assert [r.pk for r in second] == [r.pk for r in runs[3:]]
    assert store.claim("w3", None, limit=3) == []
    for run in first:
        # Claimed ahead: no handler began yet, so it is not running (and not started).
        assert (run.status, run.worker_id, run.attempt) == (Status.CLAIMED, "w1", 1)
        assert run.started_at is None
        assert kinds(run)[-1] == ("status", "claimed")


def test_begin_runs_records_running_only_while_the_worker_holds_the_claim():
    held, lost = new(), new()
    store.claim("w1", None, limit=2)
    store.recover_lost_runs(30, worker_id="w1")  # both rescued...
    store.claim("w1", None, limit=1)  # ...and only the first claimed again
    began = timezone.now() - dt.timedelta(seconds=1)
    assert store.begin_runs("w1", {held.pk: began, lost.pk: began}) == [held.pk]
    run = Run.objects.get(pk=held.pk)
    assert (run.status, run.started_at) == (Status.RUNNING, began)
    assert kinds(run)[-1] == ("status", "running")
    assert Run.objects.get(pk=lost.pk).status == Status.PENDING
    assert store.begin_runs("w2", {held.pk: began}) == []  # not w2's


def test_a_lost_worker_costs_a_claimed_run_no_attempt():
    run = new()  # retries=0: one attempt only
    store.claim("w1", None, limit=1)
    [rescued] = store.recover_lost_runs(30, worker_id="w1")
    assert rescued.pk == run.pk
    assert (rescued.status, rescued.attempt, rescued.claims_lost) == (Status.PENDING, 0, 1)
    assert rescued.errors[-1]["type"] == "WorkerLost" and rescued.errors[-1]["counted"] is False
    assert store.claim("w2", None, limit=1)[0].attempt == 1  # its one attempt is still there


def test_a_lost_worker_costs_a_begun_run_its_attempt():
    run = new()
    store.claim("w1", None, limit=1)
    store.begin_runs("w1", {run.pk: timezone.now()})
    [rescued] = store.recover_lost_runs(30, worker_id="w1")
    assert (rescued.status, rescued.error, rescued.attempt) == (Status.FAILED, "worker lost", 1)


def test_a_run_lost_with_its_worker_again_and_again_is_charged_in_the_end(settings):
    settings.TASKS_LIVE = {"LOST_CLAIMS_LIMIT": 2}
    run = new()
    for _ in range(2):
        store.claim("w1", None, limit=1)
        assert store.recover_lost_runs(30, worker_id="w1")[0].status == Status.PENDING
    store.claim("w1", None, limit=1)
    [rescued] = store.recover_lost_runs(30, worker_id="w1")
    assert rescued.status == Status.FAILED and rescued.attempt == 1
    assert rescued.error == "worker lost 3 times while holding this run"
    assert Run.objects.get(pk=run.pk).claims_lost == 2


def test_requeue_gives_claims_back_and_cancels_those_whose_cancel_was_requested():
    waiting, canceled, elsewhere = new(), new(), new()
    store.claim("w1", None, limit=2)
    store.claim("w2", None, limit=1)
    store.transition(canceled.pk, Status.CANCEL_REQUESTED)  # as api.cancel() asks a claim
    ids = [waiting.pk, canceled.pk, elsewhere.pk]
    assert store.requeue(ids, worker_id="w1") == [waiting.pk, canceled.pk]
    got = Run.objects.in_bulk(ids)
    assert (got[waiting.pk].status, got[waiting.pk].attempt) == (Status.PENDING, 0)
    assert got[canceled.pk].status == Status.CANCELED
    assert got[canceled.pk].progress_message == "canceled before it started"
    assert got[elsewhere.pk].status == Status.CLAIMED  # w2's, untouched


def test_progress_from_a_claimed_run_records_that_its_handler_began():
    run = new()
    store.claim("w1", None, limit=1)
    assert store.save_progress(run.pk, progress_message="hi") == Status.RUNNING
    got = Run.objects.get(pk=run.pk)
    assert got.status == Status.RUNNING and got.started_at is not None
    assert kinds(run)[-2:] == [("status", "running"), ("progress", "running")]


def test_claim_skips_runs_not_yet_due_and_other_queues():
    later = new(run_after=timezone.now() + dt.timedelta(minutes=5))
    other = new(queue="other")
    mine = new()
    assert [r.pk for r in store.claim("w1", ["default"], limit=10)] == [mine.pk]
    assert [r.pk for r in store.claim("w1", ["other"], limit=10)] == [other.pk]
    assert Run.objects.get(pk=later.pk).status == Status.PENDING
    assert not store.has_due(None)


def test_a_retrying_run_is_claimed_once_its_backoff_passed():
    run = running()
    store.transition(run.pk, Status.RETRYING, run_after=timezone.now() + dt.timedelta(seconds=60))
    assert store.claim("w1", None, limit=5) == []
    Run.objects.filter(pk=run.pk).update(run_after=timezone.now())
    again = store.claim("w1", None, limit=5)
    assert [(r.pk, r.attempt) for r in again] == [(run.pk, 2)]


def test_claim_run_claims_a_specific_run_once():
    run = new()
    assert store.claim_run(run.pk, "w1").status == Status.RUNNING
    assert store.claim_run(run.pk, "w2") is None
    assert Run.objects.get(pk=run.pk).worker_id == "w1"


def test_requeue_returns_unstarted_runs_without_counting_the_attempt():
    run = running()
    assert store.requeue([run.pk], reason="worker stopping") == [run.pk]
    back = Run.objects.get(pk=run.pk)
    assert (back.status, back.attempt, back.worker_id, back.progress_message) == (
        Status.PENDING, 0, "", "worker stopping")
    store.transition(run.pk, Status.CANCELED)
    assert store.requeue([run.pk]) == []


# ---------------------------------------------------------------- recovery


def test_lost_worker_runs_go_back_to_pending_when_attempts_remain():
    worker("dead", seconds_ago=60)
    run = running("dead", max_attempts=2)
    assert [r.pk for r in store.recover_lost_runs(heartbeat_timeout=30)] == [run.pk]
    back = Run.objects.get(pk=run.pk)
    assert (back.status, back.worker_id, back.attempt) == (Status.PENDING, "", 1)
    assert back.errors[-1]["type"] == "WorkerLost" and back.worker_ids == ["dead"]


def test_lost_worker_runs_fail_when_no_attempt_is_left():
    worker("dead", seconds_ago=60)
    run = running("dead", max_attempts=1)
    store.recover_lost_runs(heartbeat_timeout=30)
    failed = Run.objects.get(pk=run.pk)
    assert (failed.status, failed.error, failed.error_type) == (Status.FAILED, "worker lost", "WorkerLost")


def test_a_lost_run_with_a_cancel_request_ends_canceled():
    worker("dead", seconds_ago=60)
    run = running("dead", max_attempts=3)
    store.transition(run.pk, Status.CANCEL_REQUESTED)
    store.recover_lost_runs(heartbeat_timeout=30)
    assert Run.objects.get(pk=run.pk).status == Status.CANCELED


def test_runs_of_a_live_worker_are_never_rescued():
    worker("alive", seconds_ago=1)
    run = running("alive", max_attempts=3)
    assert store.recover_lost_runs(heartbeat_timeout=30) == []
    assert Run.objects.get(pk=run.pk).status == Status.RUNNING


def test_stopped_and_unknown_workers_count_as_lost():
    worker("stopped", stopped=True)
    a = running("stopped", max_attempts=2)
    b = running("never-registered", max_attempts=2)
    assert {r.pk for r in store.recover_lost_runs(heartbeat_timeout=30)} == {a.pk, b.pk}


def test_a_lost_run_is_rescued_once():
    worker("dead", seconds_ago=60)
    run = running("dead", max_attempts=3)
    assert len(store.recover_lost_runs(heartbeat_timeout=30)) == 1
    assert store.recover_lost_runs(heartbeat_timeout=30) == []
    assert [k for k in kinds(run) if k[1] == "pending"] == [("created", "pending"), ("status", "pending")]


def test_recover_runs_of_one_named_worker():
    worker("alive", seconds_ago=0)
    mine = running("alive", max_attempts=2)
    other = running("w2", max_attempts=2)
    assert [r.pk for r in store.recover_lost_runs(30, worker_id="alive")] == [mine.pk]
    assert Run.objects.get(pk=other.pk).status == Status.RUNNING


def test_heartbeat_keeps_a_worker_alive():
    worker("w", seconds_ago=60)
    assert not store.worker_alive("w", 30)
    store.heartbeat("w", processed=3)
    assert store.worker_alive("w", 30)
    store.stop_worker("w")
    assert not store.worker_alive("w", 30)


# ---------------------------------------------------------------- listing


def test_runs_filters_by_task_status_ids_and_labels():
    a = new("noop", labels={"tenant": "acme", "a__b": "x"})
    b = new("add", labels={"tenant": "other"})
    store.claim_run(b.pk, "w1")
    assert list(store.runs(task=["noop"])) == [a]
    assert list(store.runs(status=[Status.RUNNING])) == [Run.objects.get(pk=b.pk)]
    assert list(store.runs(run_ids=[b.pk, a.pk])) == [Run.objects.get(pk=b.pk), a]  # newest first
    assert list(store.runs(labels={"tenant": "acme"})) == [a]
    assert list(store.runs(labels={"tenant": "acme", "a__b": "x"})) == [a]  # keys are literal
    assert list(store.runs(labels={"a": "x"})) == []
    assert list(store.runs(labels={"tenant": "nobody"})) == []


# ---------------------------------------------------------------- the worker's batched path


# The supervisor hands settle() its claimed copy of each run (the event state is built
# from it); without one, settle() reads the run. Both paths must decide alike.
with_and_without_claimed_copy = pytest.mark.parametrize("copy", [True, False],
                                                        ids=["claimed-copy", "read"])


def outcome(run: Run, target: Status, fields: dict, copy: bool) -> store.Outcome:
    return store.Outcome(run.pk, target, fields, run=run if copy else None)


@with_and_without_claimed_copy
def test_settle_writes_outcomes_and_claims_in_one_go(copy):
    done, waiting = running("w1"), new()
    finished, claimed = store.settle(
        [outcome(done, Status.COMPLETED, {"result": 1}, copy)], "w1", None, limit=5)
    assert [(r.pk, r.status, r.result) for r in finished] == [(done.pk, Status.COMPLETED, 1)]
    assert [r.pk for r in claimed] == [waiting.pk]
    assert kinds(done)[-1] == ("status", "completed")


@with_and_without_claimed_copy
def test_settled_outcomes_read_back_exactly_as_reported(copy):
    # Outcomes are written by raw SQL (on PostgreSQL one UPDATE whose values are one
    # JSON parameter): every JSON shape of a result and every field must survive it.
    results = [None, "text 'quoted' \"é\"", 0, -2.5e-9, True, [], {}, [None, {"k": [1]}]]
    runs = [running("w1") for _ in results]
    failed = running("w1", max_attempts=1)
    at = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    outcomes = [outcome(run, Status.COMPLETED,
                        {"result": result, "progress_current": 7, "progress_message": "ok"}, copy)
                for run, result in zip(runs, results, strict=True)]
    outcomes.append(outcome(failed, Status.FAILED, {
        "error_type": "ValueError", "error": "bad\nline", "finished_at": at,
        "steps": [{"name": "a", "state": "failed"}]}, copy))
    finished, _ = store.settle(outcomes, "w1", None, limit=0)
    assert len(finished) == len(outcomes)
    for run, result in zip(runs, results, strict=True):
        row = Run.objects.get(pk=run.pk)
        assert (row.status, row.result, row.progress_current, row.progress_message) == (
            Status.COMPLETED, result, 7, "ok")
    row = Run.objects.get(pk=failed.pk)
    assert (row.status, row.error_type, row.error, row.finished_at, row.steps) == (
        Status.FAILED, "ValueError", "bad\nline", at, [{"name": "a", "state": "failed"}])
    assert Run.objects.filter(pk=runs[0].pk, result__isnull=True).exists()  # SQL NULL, as the ORM


@with_and_without_claimed_copy
def test_settle_ignores_outcomes_of_runs_that_are_no_longer_this_workers(copy):
    run = running("w1")
    store.recover_lost_runs(30, worker_id="w1")  # rescued meanwhile
    other = running("w1", max_attempts=2)
    store.recover_lost_runs(30, worker_id="w1")  # back to pending, then claimed by w2
    store.claim("w2", None, limit=1)
    finished, _ = store.settle([outcome(run, Status.COMPLETED, {}, copy),
                                outcome(other, Status.COMPLETED, {}, copy)], "w1", None, limit=0)
    assert finished == [] and Run.objects.get(pk=run.pk).status == Status.FAILED
    assert Run.objects.get(pk=other.pk).status == Status.CLAIMED


@with_and_without_claimed_copy
def test_a_completed_outcome_after_a_cancel_request_ends_canceled_with_its_result(copy):
    run, other = running("w1"), running("w1")
    store.transition(run.pk, Status.CANCEL_REQUESTED)  # the handler returned anyway
    finished, _ = store.settle([outcome(run, Status.COMPLETED, {"result": 3}, copy),
                                outcome(other, Status.COMPLETED, {"result": 4}, copy)],
                               "w1", None, limit=0)
    assert sorted((r.pk, r.status, r.result) for r in finished) == [
        (run.pk, Status.CANCELED, 3), (other.pk, Status.COMPLETED, 4)]
    assert (Run.objects.get(pk=run.pk).status, Run.objects.get(pk=run.pk).result) == (Status.CANCELED, 3)
    assert kinds(run)[-1] == ("status", "canceled")
    assert Run.objects.get(pk=other.pk).status == Status.COMPLETED


def test_a_transition_to_completed_after_a_cancel_request_ends_canceled():
    run = running("w1")
    store.transition(run.pk, Status.CANCEL_REQUESTED)
    assert store.transition(run.pk, Status.COMPLETED, result=[1]).status == Status.CANCELED
    assert Run.objects.get(pk=run.pk).result == [1]


@with_and_without_claimed_copy
def test_a_retry_outcome_after_a_cancel_request_ends_canceled(copy):
    run = running("w1", max_attempts=3)
    store.transition(run.pk, Status.CANCEL_REQUESTED)
    later = timezone.now() + dt.timedelta(seconds=30)
    finished, _ = store.settle(
        [outcome(run, Status.RETRYING, {"run_after": later}, copy)], "w1", None, limit=0)
    assert [r.status for r in finished] == [Status.CANCELED]
    assert store.transition(running("w1", max_attempts=3).pk, Status.RETRYING).status == Status.RETRYING


def test_created_runs_read_back_exactly_as_given():
    # create_runs writes raw SQL (one JSON parameter): every column must survive it.
    paris = dt.timezone(dt.timedelta(hours=1))
    fields = dict(
        args=[1, "two", None, [3.5]], kwargs={"nested": {"é": ["ü", 1e-7]}, "quote": "'\""},
        queue="emails", priority=-3, timeout=2.5, max_attempts=4,
        run_after=dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=paris),
        steps=[{"name": "a", "weight": 1, "state": "pending"}],
        labels={"tenant": "ørsted", "k:v": "a,b"}, concurrency_key="ck", unique_key="u-1",
    )
    created = store.create_runs([store.NewRun(task_name="noop", **fields),
                                 store.NewRun(task_name="add", kwargs={"a": 1, "b": 2})])
    first, second = (Run.objects.get(pk=run.pk) for run in created)
    for name, value in fields.items():
        assert getattr(first, name) == value == getattr(created[0], name), name
    assert first.created_at == created[0].created_at and first.status == Status.PENDING
    assert (second.task_name, second.kwargs, second.queue) == ("add", {"a": 1, "b": 2}, "default")
    assert second.pk > first.pk
    # Each run got its own "created" event, carrying its state.
    assert [e.data["id"] for e in RunEvent.objects.order_by("id")] == [first.pk, second.pk]
