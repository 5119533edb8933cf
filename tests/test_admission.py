"""Constraint groups on the real database: who is admitted when, what waiting runs show,
and that every finished status frees a slot (django_tasks_live/admission.py)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import admission, store
from django_tasks_live.limits import LimitKeyError
from django_tasks_live.models import LimitKey, Run, RunEvent, RunLimit
from django_tasks_live.states import Status
from tests.support.db import requires_postgres

pytestmark = pytest.mark.django_db


def fresh(run: Run) -> Run:
    return Run.objects.get(pk=run.pk)


def admitted(run: Run) -> bool:
    return fresh(run).run_after != admission.WAITING_UNTIL


def finish(runs, target=Status.COMPLETED, worker="w1", fields=None):
    return store.settle([store.Outcome(r.pk, target, dict(fields or {}), run=r) for r in runs],
                        worker, None, 0)[0]


def test_unlimited_runs_have_no_key_rows_and_claim_as_before():
    run = tasks_live.start("noop")
    assert run.limited == 0 and not RunLimit.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        [claimed] = store.claim("w1", None, 10)
        finish([claimed])
    assert not any("tasks_live_run" + "limit" in q["sql"] or "limitkey" in q["sql"].lower()
                   for q in queries.captured_queries)


def test_a_key_admits_up_to_its_cap_and_the_rest_wait_with_a_reason():
    runs = [tasks_live.start("per-key", key="a.com") for _ in range(3)]
    other = tasks_live.start("per-key", key="b.com")
    assert [admitted(r) for r in runs] == [True, True, False]
    assert admitted(other)
    waiting = fresh(runs[2])
    assert waiting.status == Status.PENDING and waiting.progress_message == "waiting for key a.com"
    assert runs[2].progress_message == "waiting for key a.com"  # the created event says it
    claimed = store.claim("w1", None, 10)
    assert sorted(r.pk for r in claimed) == sorted([runs[0].pk, runs[1].pk, other.pk])


def test_a_finished_run_admits_the_next_one_in_the_same_transaction_with_an_event():
    runs = [tasks_live.start("per-key", key="a.com") for _ in range(3)]
    claimed = store.claim("w1", None, 10)
    finish(claimed[:1])
    run = fresh(runs[2])
    assert run.run_after <= timezone.now() and run.progress_message == ""
    event = RunEvent.objects.filter(run_id=run.pk).latest("id")
    assert (event.kind, event.data["progress"]["message"]) == ("progress", "")
    assert [r.pk for r in store.claim("w2", None, 10)] == [run.pk]


def test_an_admitted_run_the_same_settle_claims_gets_its_claim_event_only():
    first, second = (tasks_live.start("exclusive", key="k") for _ in range(2))
    [held] = store.claim("w1", None, 10)
    assert held.pk == first.pk
    _, claimed = store.settle([store.Outcome(held.pk, Status.COMPLETED, {}, run=held)],
                              "w1", None, 10)
    assert [r.pk for r in claimed] == [second.pk] and claimed[0].progress_message == ""
    events = RunEvent.objects.filter(run_id=second.pk).order_by("id")
    assert [(e.kind, e.data["status"]) for e in events] == [("created", "pending"),
                                                            ("status", "claimed")]
    assert events.last().data["progress"]["message"] == ""


def test_one_settle_frees_keys_of_different_caps_and_admits_each_in_its_order():
    # Two figures of cap in one admission: SQLite reads the candidates once per figure.
    per_key = [tasks_live.start("per-key", key="a.com") for _ in range(5)]  # cap 2
    exclusive = [tasks_live.start("exclusive", key="b.com") for _ in range(3)]  # cap 1
    claimed = store.claim("w1", None, 10)
    assert {r.pk for r in claimed} == {per_key[0].pk, per_key[1].pk, exclusive[0].pk}
    finish(claimed)
    assert [admitted(r) for r in per_key[2:]] == [True, True, False]
    assert [admitted(r) for r in exclusive[1:]] == [True, False]


def test_a_run_held_back_by_its_other_key_lets_the_run_behind_it_start():
    holder = tasks_live.start("site-one", key="k")
    tasks_live.start("site-wide", key="elsewhere")  # takes the whole group's one slot
    blocked = tasks_live.start("site-wide", key="k")  # first in line for k, group full
    behind = tasks_live.start("site-one", key="k")
    claimed = {r.pk: r for r in store.claim("w1", None, 10)}
    finish([claimed[holder.pk]])
    assert not admitted(blocked) and admitted(behind)


def test_priority_then_fifo_order_per_key():
    holder = tasks_live.start("exclusive", key="k")
    low = tasks_live.start("exclusive", key="k")
    high = tasks_live.using(priority=5).start("exclusive", key="k")
    later_high = tasks_live.using(priority=5).start("exclusive", key="k")
    order = []
    current = store.claim("w1", None, 10)
    assert [r.pk for r in current] == [holder.pk]
    for _ in range(3):
        finish(current)
        current = store.claim("w1", None, 10)
        order += [r.pk for r in current]
    assert order == [high.pk, later_high.pk, low.pk]


@pytest.mark.parametrize("how", ["failed", "timed_out", "skipped", "canceled_held", "rescued"])
def test_every_finished_status_frees_the_slot(how):
    first, second = (tasks_live.start("exclusive", key="k") for _ in range(2))
    [held] = store.claim("w1", None, 10, begin=True)
    if how == "canceled_held":
        store.request_cancel(held.pk)
        store.end_killed_run(held.pk, Status.CANCELED, "Canceled", "killed")
    elif how == "rescued":  # lost worker, attempts used up: failed by the rescue
        store.recover_lost_runs(30, worker_id="w1")
    else:
        finish([held], Status(how))
    assert fresh(first).status in {Status.FAILED, Status.TIMED_OUT, Status.SKIPPED,
                                   Status.CANCELED}
    assert admitted(second)


def test_a_slot_is_held_through_retrying_and_a_rescue_to_pending():
    first, second = (tasks_live.start("per-key", key="k", sleep=0) for _ in range(2))
    third = tasks_live.start("per-key", key="k")
    held = store.claim("w1", None, 10)
    finish(held[:1], Status.RETRYING, fields={"run_after": timezone.now()})
    assert not admitted(third)
    store.recover_lost_runs(30, worker_id="w1")  # the other one goes back to pending
    assert fresh(second).status == Status.PENDING and not admitted(third)
    assert {first.pk, second.pk} <= {r.pk for r in store.claim("w2", None, 10)}


def test_canceling_a_waiting_run_drops_its_rows_and_takes_no_slot():
    _holder, waiting, last = (tasks_live.start("exclusive", key="k") for _ in range(3))
    tasks_live.cancel(waiting)
    assert not RunLimit.objects.filter(run_id=waiting.pk).exists()
    [held] = store.claim("w1", None, 10)
    finish([held])
    assert admitted(last)


def test_a_key_function_returning_none_exempts_and_one_that_raises_fails_the_start():
    exempt = [tasks_live.start("exclusive") for _ in range(2)]
    assert all(r.limited == 0 for r in exempt)
    count = Run.objects.count()
    with pytest.raises(LimitKeyError, match="raised LookupError: no such key"):
        tasks_live.start("exclusive", key="boom")
    with pytest.raises(LimitKeyError):
        tasks_live.start_many([("exclusive", {"key": "x"}), ("exclusive", {"key": "boom"})])
    assert Run.objects.count() == count and not RunLimit.objects.exists()


def test_group_caps_are_shared_by_the_tasks_that_name_the_group():
    runs = [tasks_live.start(name, key=str(i))
            for i, name in enumerate(["dns-resolve", "dns-whois"] * 3)]
    assert sum(admitted(r) for r in runs) == 3
    assert fresh(runs[3]).progress_message == "waiting for a dns slot"


def test_a_run_needing_two_keys_waits_for_both():
    a1 = tasks_live.start("both", key="a")
    b1 = tasks_live.start("both", key="b")
    a2 = tasks_live.start("both", key="a")  # key a busy
    c1 = tasks_live.start("both", key="c")  # group full (a1, b1)
    assert [admitted(r) for r in (a1, b1, a2, c1)] == [True, True, False, False]
    claimed = {r.pk: r for r in store.claim("w1", None, 10)}
    finish([claimed[b1.pk]])  # frees the group, not key a: c1 goes, a2 still waits
    assert admitted(c1) and not admitted(a2)


def test_rate_limit_counts_starts_when_handlers_begin_and_delays_the_next_by_the_window():
    runs = [tasks_live.start("rated", key="t") for _ in range(4)]
    assert [admitted(r) for r in runs] == [True, False, False, False]
    [first] = store.claim("w1", None, 10)
    assert not admitted(runs[1])  # claimed, its handler not begun: no start counted yet
    store.begin_runs("w1", {first.pk: timezone.now()})
    assert fresh(runs[1]).run_after <= timezone.now()  # one start of two in the window
    [second] = store.claim("w1", None, 10)
    finish([second], fields={"started_at": timezone.now()})  # a short run: begun and done
    third = fresh(runs[2])
    assert third.run_after >= fresh(runs[0]).started_at + dt.timedelta(seconds=1)
    assert third.progress_message.startswith("rate limited until ")
    assert store.claim("w1", None, 10) == []
    assert len(LimitKey.objects.get(key="r:rated:t").starts) == 2


def test_a_rate_limited_run_that_never_began_frees_its_turn_without_counting():
    first, second = (tasks_live.start("rated", key="t") for _ in range(2))
    tasks_live.cancel(first)
    assert admitted(second) and LimitKey.objects.get(key="r:rated:t").starts == []


def test_cooldown_gap_counts_from_the_previous_finish():
    first, second = (tasks_live.start("cooled", key="acct") for _ in range(2))
    [held] = store.claim("w1", None, 10)
    assert not admitted(second)
    finish([held])
    ended = fresh(first).finished_at
    run = fresh(second)
    assert run.run_after >= ended + dt.timedelta(seconds=0.3)
    assert run.progress_message.startswith("cooling down until ")


def test_a_delayed_limited_run_is_admitted_by_the_sweep_once_due():
    run = tasks_live.using(delay=0.05).start("exclusive", key="k")
    assert not admitted(run) and store.claim("w1", None, 10) == []
    RunLimit.objects.filter(run_id=run.pk).update(due=timezone.now())
    assert store.sweep_limits() == 1
    assert [r.pk for r in store.claim("w1", None, 10)] == [run.pk]


def test_the_sweep_admits_after_a_holder_was_deleted():
    holder, waiting = (tasks_live.start("exclusive", key="k") for _ in range(2))
    Run.objects.filter(pk=holder.pk).delete()  # its rows go with it, no event frees them
    assert not admitted(waiting)
    assert store.sweep_limits() == 1 and admitted(waiting)
    assert store.sweep_limits() == 0


def test_a_chain_step_whose_key_function_raises_fails_the_chain():
    # The second step gets the first's result (1) as its key: not a string.
    parent = tasks_live.chain(("noop", {"n": 1}), ("exclusive", {}))
    [step] = store.claim("w1", None, 10)
    finish([step], fields={"result": 1})
    parent = fresh(parent)
    assert (parent.status, parent.error_type) == (Status.FAILED, "LimitKeyError")


def test_the_admin_shows_why_a_limited_run_waits(admin_client):
    from django.urls import reverse

    holder, waiting = (tasks_live.start("exclusive", key="a.com") for _ in range(2))
    listing = admin_client.get(reverse("admin:django_tasks_live_run_changelist")).content.decode()
    assert listing.count('title="waiting for key a.com">limited</span>') == 1
    page = admin_client.get(reverse("admin:django_tasks_live_run_change", args=[waiting.pk]))
    assert "Waiting: waiting for key a.com; it starts as soon as its limits allow" in \
        page.content.decode()
    assert "its limits allow" not in admin_client.get(
        reverse("admin:django_tasks_live_run_change", args=[holder.pk])).content.decode()


@requires_postgres
def test_postgresql_admission_seeks_its_rows_whatever_the_planner_believes():
    # Just-inserted rows that nothing has ANALYZEd yet: the planner guessed wrongly how
    # many runs wait, and the settle scanned the claim index or a whole table for the
    # 100 rows it frees and admits (in the benchmark, a quarter of a settle's time).
    tasks_live.start_many([("exclusive", {"key": f"k{i % 100}"}) for i in range(300)])
    claimed = store.claim("w1", None, 100)
    statements = []

    def record(execute, sql, params, many, context):
        if "runlimit" in sql or "limitkey" in sql:
            statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        finish(claimed)
    assert sum(admitted(run) for run in Run.objects.filter(status=Status.PENDING)) == 100
    with connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            # (A scan of the key rows' table itself is the planner's right when it is tiny.)
            assert not re.search(r"Seq Scan on django_tasks_live_(run|limitkey)\b|tl_run_claim",
                                 plan), (sql, plan)
    assert len(statements) >= 4  # key rows deleted, keys locked, candidates, admission
