"""The persistence layer: every query on runs, their events, workers and schedules.

Views, the worker, the runner and the stream go through these functions. Each write
appends ``RunEvent`` rows in the same transaction and hands them to
:func:`events.publish`, which pushes them to the channel layer after commit.
Claims run in short transactions; handlers never run inside one.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import DateTimeField, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from . import admission, conf, events, executors, flows, limits, pauses, raw
from .models import Lease, Run, RunEvent, Schedule, Task, Worker
from .registry import registry
from .states import (
    ACTIVE,
    ALLOWED_FROM,
    CLAIMABLE,
    TERMINAL,
    IllegalTransition,
    Status,
    outcome_status,
)

NOTIFY_CHANNEL = "tasks_live_new"  # the trigger of migration 0002 notifies it
CLAIM_INDEX, CLAIM_ANY_INDEX = "tl_run_claim", "tl_run_claim_any"  # see Run.Meta.indexes


def _db() -> str:
    return router.db_for_write(Run)


def _is_postgres(using: str | None = None) -> bool:
    return connections[using or _db()].vendor == "postgresql"


@dataclass
class NewRun:
    """What it takes to insert one run (validated by the api before it gets here)."""

    task_name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "live"
    backend: str = ""
    queue: str = "default"
    priority: int = 0
    run_after: dt.datetime | None = None
    timeout: float | None = None
    max_attempts: int = 1
    steps: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    concurrency_key: str = ""
    unique_key: str | None = None
    pending_key: str | None = None
    parent_id: int | None = None
    position: int | None = None
    status: str = Status.PENDING
    rerun_of_id: int | None = None
    schedule_id: int | None = None
    fire_time: dt.datetime | None = None
    owner_id: int | None = None
    # None: chosen by executors.choose() (per task, per queue, then TASKS_LIVE["EXECUTOR"]).
    executor: str | None = None


def _save_events(changes: Sequence[tuple[Run, str]], using: str, *,
                 follow_limits: bool = True) -> None:
    """Append one ``RunEvent`` per (run, kind) with the run's current state, and push
    them to the channel layer after commit; then what those status changes set off
    (``follow_limits=False``: the caller applied them to limited runs already)."""
    if not changes:
        return
    rows, states = _event_rows(changes, connections[using])
    _publish_events(_insert_rows(RunEvent, rows, using), changes, states, using)
    # Limited runs free their slots (and admit the next runs), children of chains and
    # groups that just ended move their flow on, in this transaction (two attribute
    # tests per run for everything else).
    limited, parents = [], set()
    for run, kind in changes:
        if kind == "status" and (run.limited or run.parent_id is not None):
            if run.limited and follow_limits:
                limited.append(run)
            if run.parent_id is not None and run.status in TERMINAL:
                parents.add(run.parent_id)
    if limited:
        _follow_limits(limited, using)
    if parents:
        _advance_flows(parents, using)


def _follow_limits(changed: Sequence[Run], using: str, *, quiet: bool = False) -> list[Run]:
    """Status changes of runs (limited or not): free the slots of limited ones, count
    their starts and admit the runs that may start now (see :mod:`.admission`).
    Returns the admitted runs; ``quiet``: the caller saves their events and wakes the
    workers (a settle: its own claim may take them)."""
    limited = [run for run in changed if run.limited]
    if not limited:
        return []
    return _write_admitted(admission.on_status(limited, using), using, quiet=quiet)


def _write_admitted(admitted: Sequence[admission.Admission], using: str,
                    created: Sequence[Run] = (), *, quiet: bool = False) -> list[Run]:
    """Write the admission of limited runs (their ``run_after`` and reason) in one
    statement that reads them back, with a progress event each but for runs being
    ``created`` in this transaction (their created event carries it) or ``quiet``; wake
    the workers. Returns the runs written."""
    if not admitted:
        return []
    runs = _admit_rows(admitted, using)
    if not _is_postgres(using):  # PostgreSQL: in the same statement
        admission.hold([run.pk for run in runs], using)
    new = {run.pk: run for run in created}
    for run in runs:
        if run.pk in new:
            new[run.pk].run_after, new[run.pk].progress_message = run.run_after, \
                run.progress_message
            new[run.pk].updated_at = run.updated_at
    if not quiet:
        _save_events([(run, "progress") for run in runs if run.pk not in new], using)
        admission.notify(runs, using, NOTIFY_CHANNEL)
    return runs


def _admit_rows(admitted: Sequence[admission.Admission], using: str) -> list[Run]:
    """``UPDATE … FROM`` the admissions (one JSON parameter) ``RETURNING`` the rows, of
    the runs still waiting that no other transaction holds (``SKIP LOCKED``)."""
    conn = connections[using]
    q = conn.ops.quote_name
    table = q(Run._meta.db_table)
    data = [{"x_id": a.run_id, "x_after": _json_datetime(a.run_after, conn), "x_message": a.message}
            for a in admitted]
    statuses = ", ".join(f"'{status}'" for status in sorted(CLAIMABLE))
    sets = (f"{q('run_after')} = x.x_after, {q('progress_message')} = x.x_message, "
            f"{q('updated_at')} = %s")
    now, waiting = _prep_datetime(timezone.now(), conn), _prep_datetime(admission.WAITING_UNTIL, conn)
    # Only what their events read (their other columns stay deferred).
    shape = raw.shape(Run, using, Run.STATE_FIELDS)
    if conn.vendor == "postgresql":  # and their keys are held, in one statement
        columns = ", ".join(f"{table}.{column}" for column in shape.columns.split(", "))
        # The rows are locked one primary-key seek each, and the waiting checks read the
        # locked rows: written on the table, those checks made the planner (which rarely
        # knows how many runs wait) scan the claim index for the ids, or the whole table.
        sql = ("WITH locked AS (SELECT r.* FROM unnest(%s::bigint[]) AS a(id) CROSS JOIN "
               f"LATERAL (SELECT {q('id')}, {q('status')}, {q('run_after')} FROM {table} "
               f"WHERE {q('id')} = a.id FOR UPDATE SKIP LOCKED) AS r), "
               f"admitted AS (UPDATE {table} SET {sets} "
               "FROM jsonb_to_recordset(%s::jsonb) AS x(x_id bigint, x_after timestamptz, "
               f"x_message text), locked WHERE {table}.{q('id')} = x.x_id "
               f"AND locked.{q('id')} = x.x_id AND locked.{q('status')} IN ({statuses}) "
               f"AND locked.{q('run_after')} = %s RETURNING {columns}), "
               f"held AS (UPDATE {admission.held_sql(conn)} "
               f"WHERE {q('run_id')} IN (SELECT {q('id')} FROM admitted)) SELECT * FROM admitted")
        params = [[a.run_id for a in admitted], now, raw.json_param(data), waiting]
    else:
        # SQLite serializes writers (no row to skip). The admissions are materialized
        # first so that they drive the join (one primary-key seek each): joined as they
        # stand, SQLite re-read the whole JSON array for every run, O(n²) per settle.
        sql = ("WITH x AS MATERIALIZED (SELECT json_extract(value, '$.x_id') AS x_id, "
               "json_extract(value, '$.x_after') AS x_after, "
               "json_extract(value, '$.x_message') AS x_message FROM json_each(%s)) "
               f"UPDATE {table} SET {sets} FROM x WHERE {table}.{q('id')} = x.x_id "
               f"AND {q('status')} IN ({statuses}) AND {q('run_after')} = %s "
               f"RETURNING {shape.columns}")
        params = [raw.json_param(data), now, waiting]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return raw.instances(Run, cursor.fetchall(), using, Run.STATE_FIELDS)


def sweep_limits() -> int:
    """Admit limited runs that could start but were not admitted (see
    :func:`admission.sweep`); returns how many. One cheap read when none wait."""
    using = _db()
    if not admission.has_waiting(using):
        return 0
    with transaction.atomic(using=using):
        admitted = admission.sweep(using)
        _write_admitted(admitted, using)
    return len(admitted)


def _event_rows(
    changes: Sequence[tuple[Run, str]], conn: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``RunEvent`` rows (JSON-ready) for (run, kind) pairs, and the states they carry."""
    now = _json_datetime(timezone.now(), conn)
    states = [run.to_state() for run, _ in changes]
    rows = [{"run_id": run.pk, "kind": kind, "status": run.status, "data": state, "created_at": now}
            for (run, kind), state in zip(changes, states, strict=True)]
    return rows, states


def _publish_events(
    event_ids: Sequence[int], changes: Sequence[tuple[Run, str]],
    states: Sequence[dict[str, Any]], using: str,
) -> None:
    events.publish(
        (events.message(event_id, kind, state, run.owner_id)
         for event_id, (run, kind), state in zip(event_ids, changes, states, strict=True)),
        using=using,
    )


def _insert_rows(model: Any, rows: Sequence[dict[str, Any]], using: str) -> list[int]:
    """INSERT ``rows`` (column -> JSON-ready value, the same columns in each) into
    ``model``'s table in one statement; returns their ids in order.

    The rows travel as ONE JSON parameter that the database unpacks: encoding a list in
    C is far cheaper than the ORM's per-value quoting and SQL building (this is both
    the worker's hottest write and the body of ``start()``).
    """
    conn = connections[using]
    sql = f"{_insert_sql(model, list(rows[0]), conn)} RETURNING {conn.ops.quote_name('id')}"
    with conn.cursor() as cursor:
        cursor.execute(sql, [raw.json_param(rows)])
        return [row[0] for row in cursor.fetchall()]


def _insert_sql(model: Any, columns: Sequence[str], conn: Any) -> str:
    """``INSERT`` of ``columns`` into ``model``'s table, the rows taken in order from
    one JSON parameter (a list of objects)."""
    q = conn.ops.quote_name
    table = q(model._meta.db_table)
    names = ", ".join(q(c) for c in columns)
    if conn.vendor == "postgresql":
        select = (f"SELECT {names} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) "
                  "WITH ORDINALITY AS x ORDER BY x.ordinality")
    else:
        picks = ", ".join(f"json_extract(value, '$.{c}')" for c in columns)
        select = f"SELECT {picks} FROM json_each(%s) ORDER BY key"
    return f"INSERT INTO {table} ({names}) {select}"


def _json_datetime(value: dt.datetime | None, conn: Any) -> str | None:
    """A datetime as the database reads it from JSON text: the ORM's value for it,
    as ISO text where that is still a datetime (PostgreSQL)."""
    prepared = _prep_datetime(value, conn)
    return prepared.isoformat() if isinstance(prepared, dt.datetime) else prepared


def _json_row(run: Run, conn: Any, fields: Sequence[Any] | None = None) -> dict[str, Any]:
    """``run``'s columns (``fields``, default all but the id) as JSON-ready values, the
    way :func:`_insert_rows` and :func:`_update_rows` send them."""
    if fields is None:
        fields = [f for f in Run._meta.concrete_fields if not f.primary_key]
    row = {}
    for model_field in fields:
        value = getattr(run, model_field.attname)
        if isinstance(model_field, DateTimeField):
            value = _json_datetime(value, conn)
        row[model_field.column] = value
    return row


# ---------------------------------------------------------------- creating runs


def create_runs(new_runs: Sequence[NewRun]) -> list[Run]:
    """Insert pending runs and their ``created`` events in one transaction."""
    using = _db()
    conn = connections[using]
    # First, in the caller: a limit's key function that fails fails the start.
    needs = [_limit_needs(new) for new in new_runs]
    now = timezone.now()
    created, waiting = [], []
    for new, found in zip(new_runs, needs, strict=True):
        run_after = new.run_after or now
        engine = new.executor or executors.choose(new.task_name, new.queue)
        run = Run(
            **{k: v for k, v in vars(new).items() if k not in ("run_after", "executor")},
            run_after=run_after,
            created_at=now,
            updated_at=now,
            executor=engine,
        )
        if found:
            waiting.append(admission.hold_back(run, found))
        # Due runs of another engine are handed over at commit (executors.after_create);
        # later ones (and limited ones) by its sweeper once due.
        run.handed_at = now if engine != executors.BUILTIN and run.run_after <= now else None
        created.append(run)
    if conn.vendor == "postgresql" and not waiting:
        _insert_runs_with_events(created, using)
    else:
        with transaction.atomic(using=using):
            _set_ids(created, _insert_rows(Run, [_json_row(run, conn) for run in created],
                                           using), using)
            if waiting:
                _write_admitted(admission.on_create(waiting, using), using, created)
            _save_events([(run, "created") for run in created], using)
    executors.after_create(created, using)
    return created


def _limit_needs(new: NewRun) -> list[limits.Need]:
    spec = registry.find(new.task_name)
    return limits.needs(spec, new.args, new.kwargs) if spec is not None else []


def _set_ids(created: Sequence[Run], ids: Sequence[int], using: str) -> None:
    for run, run_id in zip(created, ids, strict=True):
        run.pk = run_id
        run._state.adding, run._state.db = False, using


def _insert_runs_with_events(created: Sequence[Run], using: str) -> None:
    """PostgreSQL: insert runs and their ``created`` events in ONE statement, so that
    outside a transaction ``start()`` is one round trip and one commit.

    A data-modifying CTE inserts the runs; the events take their states (built here,
    before the ids exist) with each run's id set in SQL. Ids come from the sequence in
    insertion order, which pairs the n-th new id with the n-th event. At commit, a
    trigger (migration 0002) NOTIFYs idle workers.
    """
    conn = connections[using]
    q = conn.ops.quote_name
    events_table = q(RunEvent._meta.db_table)
    run_rows = [_json_row(run, conn) for run in created]
    changes = [(run, "created") for run in created]
    event_rows, states = _event_rows(changes, conn)
    event_cols = [c for c in event_rows[0] if c not in ("run_id", "data")]
    picks = ", ".join(f"e.{q(c)}" for c in event_cols)
    sql = (
        f"WITH new_runs AS ({_insert_sql(Run, list(run_rows[0]), conn)} RETURNING {q('id')}), "
        f"numbered AS (SELECT {q('id')}, row_number() OVER (ORDER BY {q('id')}) AS n "
        f"FROM new_runs) "
        f"INSERT INTO {events_table} ({q('run_id')}, {q('data')}, "
        f"{', '.join(q(c) for c in event_cols)}) "
        f"SELECT numbered.{q('id')}, jsonb_set(e.{q('data')}, '{{id}}', "
        f"to_jsonb(numbered.{q('id')})), {picks} "
        f"FROM numbered JOIN jsonb_populate_recordset(NULL::{events_table}, %s::jsonb) "
        f"WITH ORDINALITY AS e ON e.ordinality = numbered.n ORDER BY numbered.n "
        f"RETURNING {q('run_id')}, {q('id')}"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [raw.json_param(run_rows), raw.json_param(event_rows)])
        event_of = dict(cursor.fetchall())
    _set_ids(created, sorted(event_of), using)
    for run, state in zip(created, states, strict=True):
        state["id"] = run.pk
    _publish_events([event_of[run.pk] for run in created], changes, states, using)


def create_run_once(new: NewRun) -> Run | None:
    """Insert a run unless a uniqueness rule (schedule fire time, unique key) forbids it."""
    using = _db()
    try:
        with transaction.atomic(using=using):
            return create_runs([new])[0]
    except IntegrityError:
        return None


UNIQUE_TRIES = 20  # a key's run may end between a refused insert and the read that follows


class _Completed(Exception):
    """Rolls back a run-once insert that a completion committed meanwhile."""

    def __init__(self, run: Run) -> None:
        self.run = run


def start_unique(new: NewRun, *, debounce: bool = False, once: bool = False) -> tuple[Run, bool]:
    """Create ``new`` unless a run with its key may stand for it; returns (run, created).

    ``new.pending_key`` shares a run while it is claimable (tl_run_pending_key),
    ``new.unique_key`` while it is not finished (tl_run_unique_key_active). The partial
    unique indexes decide races: of concurrent inserts one wins, the others read the
    winner. ``debounce``: a waiting run takes ``new``'s arguments instead. ``once``: a
    completed run of the key is returned; it is looked for again after the insert, in
    the same transaction, so a completion that committed meanwhile is never missed.
    """
    using = _db()
    for _ in range(UNIQUE_TRIES):
        try:
            with transaction.atomic(using=using):
                if once and (done := _completed_with_key(new.unique_key, using)) is not None:
                    return done, False
                if debounce and (waiting := _collapse_into_waiting(new, using)) is not None:
                    return waiting, False
                try:
                    with transaction.atomic(using=using):
                        run = create_runs([new])[0]
                except IntegrityError:
                    existing = _sharing_run(new, using)
                    if existing is None:
                        continue  # it ended meanwhile: try again
                    if debounce:
                        existing = _collapse_into_waiting(new, using)
                        if existing is None:
                            continue
                    return existing, False
                if once and (done := _completed_with_key(new.unique_key, using)) is not None:
                    raise _Completed(done)
                return run, True
        except _Completed as exc:
            return exc.run, False
    raise RuntimeError(f"Could not start {new.task_name!r}: its key's runs kept changing "
                       f"({UNIQUE_TRIES} tries).")


def _completed_with_key(key: str | None, using: str) -> Run | None:
    return (Run.objects.using(using).filter(unique_key=key, status=Status.COMPLETED)
            .order_by("id").first())


def _sharing_run(new: NewRun, using: str) -> Run | None:
    """The run that holds ``new``'s key now (None if it just let go of it)."""
    qs = Run.objects.using(using)
    if new.pending_key is not None:
        return qs.filter(pending_key=new.pending_key, status__in=sorted(CLAIMABLE)).first()
    return qs.filter(unique_key=new.unique_key).exclude(status__in=sorted(TERMINAL)).first()


def _collapse_into_waiting(new: NewRun, using: str) -> Run | None:
    """Debounce: give the run waiting under ``new``'s key ``new``'s arguments. The row
    lock waits out a claim in progress; a run claimed meanwhile no longer matches."""
    run = (Run.objects.using(using).select_for_update()
           .filter(pending_key=new.pending_key, status__in=sorted(CLAIMABLE)).first())
    if run is None:
        return None
    run.args, run.kwargs, run.updated_at = new.args, new.kwargs, timezone.now()
    run.save(using=using, update_fields=["args", "kwargs", "updated_at"])
    return run


# ---------------------------------------------------------------- chains and groups


def create_flow(parent: NewRun, flow_plan: dict[str, Any]) -> Run:
    """Insert a chain's or group's parent run (``running`` at once: workers never claim
    it) and its first children, in one transaction."""
    using = _db()
    parent.kind, parent.status, parent.kwargs = flow_plan["flow"], Status.RUNNING, flow_plan
    parent.args, parent.steps = [], flows.stepper(flow_plan, [])
    with transaction.atomic(using=using):
        [run] = create_runs([parent])
        children = create_runs([_flow_child(run, *child) for child in flows.first_children(flow_plan)])
        run.started_at = run.updated_at
        run.steps = flows.stepper(flow_plan, [_flow_view(child) for child in children])
        run.save(using=using, update_fields=["started_at", "steps"])
    return run


def _flow_child(parent: Run, position: int, entry: dict[str, Any], first: list[Any]) -> NewRun:
    """A child of ``parent`` from its plan entry; ``first``: arguments put before the
    entry's own (the previous result of a chain, the results of a group's members)."""
    fields = {name: entry[name] for name in flows.PLAN_FIELDS}
    fields["args"] = [*first, *entry["args"]]
    fields["steps"] = [dict(step) for step in entry["steps"]]
    return NewRun(**fields, parent_id=parent.pk, position=position)


def _flow_view(run: Run) -> flows.Child:
    return flows.Child(run.pk, run.position, run.task_name, run.status, run.result, run.error)


def _advance_flows(parent_ids: Iterable[int], using: str) -> None:
    """Apply :func:`flows.decide` to each parent, locked in id order (two transactions
    ending children of the same parents never wait on each other in a cycle)."""
    for parent_id in sorted(parent_ids):
        parent = _locked(parent_id, using)
        if parent is None or parent.kind not in flows.KINDS or parent.status not in ACTIVE:
            continue  # ended already (failed, canceled): late children change nothing
        rows = (Run.objects.using(using).filter(parent_id=parent_id)
                .values_list("id", "position", "task_name", "status", "result", "error"))
        children = [flows.Child(*row) for row in rows]
        decision = flows.decide(parent.task_name, parent.pk, parent.kwargs, children)
        if decision.create:
            try:
                new = create_runs([_flow_child(parent, *child) for child in decision.create])
            except limits.LimitKeyError as exc:  # nothing was written: the flow fails
                _apply(parent, Status.FAILED, {"error": str(exc), "error_type": "LimitKeyError"},
                       using)
                continue
            children += [_flow_view(child) for child in new]
            decision.steps = flows.stepper(parent.kwargs, children)
        fields = {"steps": decision.steps, "percent": decision.percent,
                  "progress_message": decision.message}
        if decision.finish is not None:
            _apply(parent, decision.finish, {**fields, **decision.fields}, using)
        else:
            changed = _assign(parent, Status(parent.status), fields, timezone.now())
            parent.save(using=using, update_fields=changed)
            _save_events([(parent, "progress")], using)
        if decision.cancel:
            # After commit, each in its own transaction: a sibling may be locked right
            # now by the transaction that is ending it.
            transaction.on_commit(functools.partial(_cancel_each, decision.cancel),
                                  using=using, robust=True)


def _cancel_each(run_ids: Iterable[int]) -> None:
    for run_id in run_ids:
        request_cancel(run_id)


def request_cancel(run_id: int) -> Run | None:
    """End a waiting run as canceled, or ask a held one to stop; a finished (or
    missing) run is left alone (returned as it is, or None)."""
    using = _db()
    now = timezone.now()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None or run.status in TERMINAL:
            return run
        if run.status in CLAIMABLE:
            return _apply(run, Status.CANCELED, {"cancel_requested_at": now}, using)
        if run.status in ALLOWED_FROM[Status.CANCEL_REQUESTED]:
            return _apply(run, Status.CANCEL_REQUESTED, {"cancel_requested_at": now}, using)
        return run


def flow_parents(run_ids: Iterable[int]) -> list[int]:
    """Those of ``run_ids`` that are chains or groups (cancel them with :func:`cancel_flow`)."""
    return list(Run.objects.using(_db()).filter(pk__in=list(run_ids), kind__in=sorted(flows.KINDS))
                .values_list("id", flat=True))


def cancel_flow(run_id: int) -> Run:
    """Cancel a chain or group: the parent ends canceled at once, then each unfinished
    child is canceled (waiting) or asked to stop (running)."""
    using = _db()
    with transaction.atomic(using=using):
        parent = _locked(run_id, using)
        if parent is None:
            raise Run.DoesNotExist(f"Run {run_id} does not exist.")
        if parent.status not in ALLOWED_FROM[Status.CANCELED]:
            raise IllegalTransition(run_id, parent.status, Status.CANCELED)
        steps = [{**step, "state": "canceled"} if step["state"] in ("pending", "running") else step
                 for step in parent.steps]
        parent = _apply(parent, Status.CANCELED,
                        {"cancel_requested_at": timezone.now(), "steps": steps}, using)
    open_children = (Run.objects.using(using).filter(parent_id=run_id)
                     .exclude(status__in=sorted(TERMINAL)).values_list("id", flat=True))
    _cancel_each(list(open_children))
    return parent


# ---------------------------------------------------------------- reading runs


def get_run(run_id: int) -> Run:
    return Run.objects.using(_db()).get(pk=run_id)


def runs(
    *,
    task: Iterable[str] | None = None,
    status: Iterable[str] | None = None,
    run_ids: Iterable[int] | None = None,
    labels: dict[str, str] | None = None,
    owner_id: int | None = None,
    queue: Iterable[str] | None = None,
    since: dt.datetime | None = None,
) -> QuerySet[Run]:
    """Runs matching the filters, newest first (the listing the admin, the stream, the
    pages and the public ``tasks_live.runs()`` use)."""
    qs = Run.objects.using(_db()).order_by("-id")
    if task:
        qs = qs.filter(task_name__in=list(task))
    if status:
        qs = qs.filter(status__in=list(status))
    if queue:
        qs = qs.filter(queue__in=list(queue))
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if run_ids:
        qs = qs.filter(pk__in=list(run_ids))
    for i, (key, value) in enumerate((labels or {}).items()):
        # KeyTransform takes the key literally: "a__b" must not become a nested lookup.
        qs = qs.alias(**{f"_label_{i}": KeyTransform(key, "labels")}).filter(
            **{f"_label_{i}": value}
        )
    if owner_id is not None:
        qs = qs.filter(owner_id=owner_id)
    return qs


def statuses(run_ids: Iterable[int]) -> dict[int, str]:
    return dict(Run.objects.using(_db()).filter(pk__in=list(run_ids)).values_list("id", "status"))


def events_after(
    event_id: int,
    run_qs: QuerySet[Run] | None = None,
    limit: int = 1000,
    *,
    until: int | None = None,
    with_owner: bool = False,
) -> list[RunEvent]:
    """Events newer than ``event_id`` (and at most ``until``) in id order, optionally only
    for runs in ``run_qs``; ``with_owner`` adds ``run_owner_id`` (the stream's authz filter)."""
    qs = RunEvent.objects.using(_db()).filter(pk__gt=event_id).order_by("id")
    if until is not None:
        qs = qs.filter(pk__lte=until)
    if run_qs is not None:
        qs = qs.filter(run__in=run_qs.order_by().values("id"))
    if with_owner:
        qs = qs.annotate(run_owner_id=F("run__owner_id"))
    return list(qs[:limit])


# How far below the newest event a stream's reader looks for ids still uncommitted when
# it starts (see settled_event_id).
START_TAIL = 10_000


def ids_commit_in_order(using: str | None = None) -> bool:
    """Whether event ids become visible in id order: on SQLite one writer at a time
    takes ids and commits; on PostgreSQL concurrent transactions commit out of order."""
    return not _is_postgres(using)


def event_writers() -> frozenset[str]:
    """PostgreSQL: the transactions (virtual ids) that may still commit new ``RunEvent``
    rows; empty on SQLite.

    A transaction that inserts into the events table holds the table's ROW EXCLUSIVE
    lock from before it takes an id from the sequence until it commits or rolls back,
    so an id missing below newer committed ids can only be filled by one of these.
    """
    using = _db()
    if not _is_postgres(using):
        return frozenset()
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
            "AND relation = %s::regclass AND mode = 'RowExclusiveLock' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND pid <> pg_backend_pid()",
            [RunEvent._meta.db_table],
        )
        return frozenset(row[0] for row in cursor.fetchall())


def settled_event_id() -> int:
    """Where a stream's reader starts: an event id below which no id can still commit.

    SQLite, or PostgreSQL while no transaction writes events: the newest id, or while
    there is no event at all the last id ever handed out (so that a client resuming
    from it replays what follows instead of being refused as older than the oldest).
    Otherwise the id just below the lowest hole among the newest ``START_TAIL`` ids (0
    when they are all there are and start above 1: an id under the oldest may be
    uncommitted too), so the reader waits for that hole like for any other (see
    :class:`fanout.Hub`). The ids are read before the writers are looked up: a
    transaction holding an id below them is then one of those writers.
    """
    using = _db()
    tail = list(RunEvent.objects.using(using).order_by("-id").values_list("id", flat=True)[
        :START_TAIL])
    handed_out = 0 if tail else last_assigned_event_id()
    if ids_commit_in_order(using) or not event_writers():
        return tail[0] if tail else handed_out
    if not tail or (len(tail) < START_TAIL and tail[-1] > 1):
        return 0
    settled = tail[0]
    for newer, older in itertools.pairwise(tail):
        if newer != older + 1:
            settled = older  # ids descend: the last hole found is the lowest
    return settled


def last_assigned_event_id() -> int:
    """The highest event id the database has handed out, committed or not, pruned or
    not (SQLite's AUTOINCREMENT counter, PostgreSQL's sequence); 0 before the first."""
    using = _db()
    table = RunEvent._meta.db_table
    with connections[using].cursor() as cursor:
        if _is_postgres(using):
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
            (sequence,) = cursor.fetchone()
            cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")
        else:
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def run_owners(run_ids: Iterable[int]) -> dict[int, int | None]:
    """Run id -> owner id (the stream's authz filter for push-only progress)."""
    return dict(Run.objects.using(_db()).filter(pk__in=list(run_ids)).values_list("id", "owner_id"))


def snapshot(run_qs: QuerySet[Run], limit: int) -> list[tuple[dict[str, Any], int]]:
    """The newest ``limit`` runs of ``run_qs`` as (state, id of the run's latest event).

    Both come from one statement, so the event id says exactly which change the state
    already includes (the stream skips older live events of that run).
    """
    latest = RunEvent.objects.filter(run=OuterRef("pk")).order_by("-id").values("id")[:1]
    rows = run_qs.annotate(tl_last_event=Subquery(latest)).order_by("-id")[:limit]
    return [(run.to_state(), run.tl_last_event or 0) for run in rows]


def oldest_event_id() -> int | None:
    return RunEvent.objects.using(_db()).order_by("id").values_list("id", flat=True).first()


def latest_event_id() -> int:
    return RunEvent.objects.using(_db()).order_by("-id").values_list("id", flat=True).first() or 0


# ---------------------------------------------------------------- transitions


def transition(run_id: int, target: Status, **fields: Any) -> Run:
    """Move one run to ``target``, saving only ``fields`` and the status; append an event.

    Raises :class:`IllegalTransition` if the lifecycle forbids the move from the run's
    current status (read under a row lock, so concurrent moves are serialized).
    """
    using = _db()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None:
            raise Run.DoesNotExist(f"Run {run_id} does not exist.")
        target = outcome_status(run.status, target)
        if run.status not in ALLOWED_FROM[target]:
            raise IllegalTransition(run_id, run.status, target)
        return _apply(run, target, fields, using)


def transition_if(run_id: int, target: Status, **fields: Any) -> Run | None:
    """Like :func:`transition` but returns None instead of raising on an illegal move."""
    try:
        return transition(run_id, target, **fields)
    except IllegalTransition:
        return None


def _apply(run: Run, target: Status, fields: dict[str, Any], using: str) -> Run:
    changed = _assign(run, target, fields, timezone.now())
    run.save(using=using, update_fields=changed)
    _save_events([(run, "status")], using)
    return run


def _assign(run: Run, target: Status, fields: dict[str, Any], now: dt.datetime) -> list[str]:
    """Set ``fields`` and the new status on ``run`` (unsaved); returns the changed names."""
    fields = {**fields, "status": target, "updated_at": now}
    if target in TERMINAL:
        fields.setdefault("finished_at", now)
    for name, value in fields.items():
        setattr(run, name, value)
    return list(fields)


def save_progress(run_id: int, push: bool = True, **fields: Any) -> str | None:
    """Persist progress fields of an active run with a ``progress`` event.

    Returns the run's status (so the caller notices a cancel request), or None if the
    run is no longer active (then nothing is written).
    """
    using = _db()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None or run.status not in ACTIVE:
            return run.status if run else None
        now = timezone.now()
        changes: list[tuple[Run, str]] = []
        if run.status == Status.CLAIMED:  # its handler reports: it began
            run.save(using=using, update_fields=_assign(
                run, Status.RUNNING, {"started_at": run.started_at or now}, now))
            changes.append((run, "status"))
        fields["updated_at"] = now
        for name, value in fields.items():
            setattr(run, name, value)
        run.save(using=using, update_fields=list(fields))
        _save_events([*changes, (run, "progress")], using)
    return run.status


# ---------------------------------------------------------------- claiming


def claim(
    worker_id: str, queues: Sequence[str] | None, limit: int, *, begin: bool = False,
    paused: pauses.PauseSet = pauses.NOTHING,
) -> list[Run]:
    """Claim up to ``limit`` due runs for ``worker_id`` in one short transaction; they
    are ``claimed``, or ``running`` with ``begin`` (a caller that begins each at once).

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so concurrent workers never block or share.
    SQLite: the transaction takes the write lock at BEGIN (``transaction_mode``
    IMMEDIATE), and the UPDATE re-checks the status so a run is never claimed twice.
    Runs of ``paused`` tasks and queues are left alone (see :mod:`.pauses`).
    """
    return settle([], worker_id, queues, limit, begin=begin, paused=paused)[1]


@dataclass
class Outcome:
    """How an executor ended one attempt of a run (written later, in a batch)."""

    run_id: int
    target: Status
    fields: dict[str, Any]
    # The row as this worker claimed it: the event state is built from it plus
    # ``fields``, which spares re-reading whole rows (None: read it).
    run: Run | None = None


def settle(
    outcomes: Sequence[Outcome],
    worker_id: str,
    queues: Sequence[str] | None,
    limit: int,
    *,
    begin: bool = False,
    paused: pauses.PauseSet = pauses.NOTHING,
) -> tuple[list[Run], list[Run]]:
    """Record finished attempts and claim new runs in ONE transaction (one commit).

    The worker's hot path: a commit costs milliseconds on a durable database, so the
    supervisor batches every outcome its executors reported since the last round with
    the next claim. An outcome is written only while the run is still this worker's
    and the lifecycle allows the move (a rescued run is not overwritten). Claimed runs
    are ``claimed``: their handlers begin later, one after the other (see begin_runs).
    """
    using = _db()
    now = timezone.now()
    status = Status.RUNNING if begin else Status.CLAIMED
    with transaction.atomic(using=using):
        finished = _finish_outcomes(outcomes, worker_id, now, using) if outcomes else []
        # Slots the outcomes free go to the next runs of their keys before the claim,
        # so this claim may take them.
        admitted = _follow_limits(finished, using, quiet=True)
        claimed: list[Run] = []
        selection = _due_selection(connections[using], queues, limit, now, paused) if limit > 0 \
            else None
        if selection is not None:
            claimed = _claim_selected(*selection, worker_id, now, using, status)
        # A run begun at its claim counts as a rate start.
        admitted += _follow_limits(claimed, using, quiet=True)
        # One INSERT for every event (admissions and outcomes first: they happened first).
        # An admitted run this claim took needs no progress event: its claim's status
        # event, in the same INSERT, carries its state after the admission.
        taken = {run.pk for run in claimed}
        admitted = [run for run in admitted if run.pk not in taken]
        _save_events([*((run, "progress") for run in admitted),
                      *((run, "status") for run in [*finished, *claimed])], using, follow_limits=False)
        # Wake other workers for what this claim did not take.
        admission.notify(admitted, using, NOTIFY_CHANNEL)
    return finished, claimed


def claim_plan(queues: Sequence[str] | None = None, limit: int = 100,
               paused: pauses.PauseSet = pauses.NOTHING) -> str:
    """The database's plan for a claim's selection of due runs (EXPLAIN; on PostgreSQL
    EXPLAIN ANALYZE, rolled back): to check that claims read an index in claim order."""
    using = _db()
    conn = connections[using]
    prefix = "EXPLAIN ANALYZE " if conn.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    with transaction.atomic(using=using), conn.cursor() as cursor:
        selection = _due_selection(conn, queues, limit, timezone.now(), paused)
        if selection is None:
            return "nothing to claim: every queue is paused"
        cursor.execute(prefix + selection[0], selection[1])
        plan = "\n".join(" | ".join(str(c) for c in row) for row in cursor.fetchall())
        transaction.set_rollback(True, using=using)
    return plan


def _due_selection(
    conn: Any, queues: Sequence[str] | None, limit: int, now: dt.datetime,
    paused: pauses.PauseSet = pauses.NOTHING,
) -> tuple[str, list[Any]] | None:
    """The claim's selection of due runs as (sql, params), its plan pinned for the
    current transaction; None when ``paused`` leaves nothing this worker may claim."""
    when = _prep_datetime(now, conn)
    if not paused:  # the usual case: the claim as if pauses did not exist
        queues = list(queues or [])
        _pin_claim_plan(conn)
        return _due_sql(conn.alias, len(queues)), [when, *queues, limit]
    shape = pauses.claim_shape(paused, queues)
    if shape is None:
        return None
    _pin_claim_plan(conn)
    sql = _due_sql(conn.alias, len(shape.queues), len(shape.skip_tasks), len(shape.skip_queues))
    return sql, [when, *shape.queues, *shape.skip_tasks, *shape.skip_queues, limit]


@functools.cache
def _due_sql(alias: str, queue_count: int, skip_tasks: int = 0, skip_queues: int = 0) -> str:
    """The ids of due runs (of ``queue_count`` queues, 0: any; not of ``skip_tasks``
    paused tasks nor ``skip_queues`` paused queues) in claim order, locked without
    waiting where the database can: the claim's selection. Built once per shape; the
    ORM took longer to build it than the database to run it."""
    conn = connections[alias]
    q = conn.ops.quote_name
    # The statuses are literals (our own constants), not parameters: SQLite uses a
    # partial index only when the query's WHERE visibly implies the index's.
    statuses = ", ".join(f"'{status}'" for status in sorted(CLAIMABLE))
    sql = f"SELECT {q('id')} FROM {q(Run._meta.db_table)}"
    if conn.vendor == "sqlite":
        # SQLite never has statistics unless someone runs ANALYZE: without them it reads
        # every due run and sorts them. Name the index that yields claim order (one
        # queue: its own; any or several: the queue-less one, filtered).
        sql += f" INDEXED BY {q(CLAIM_INDEX if queue_count == 1 else CLAIM_ANY_INDEX)}"
    sql += f" WHERE {q('status')} IN ({statuses}) AND {q('run_after')} <= %s"
    # Runs of other engines (django-q2) are theirs; a literal, like the statuses.
    sql += f" AND {q('executor')} = '{executors.BUILTIN}'"
    if queue_count:
        sql += f" AND {q('queue')} IN ({', '.join(['%s'] * queue_count)})"
    sql += pauses.exclusion_sql(q, skip_tasks, skip_queues)
    sql += f" ORDER BY {q('priority')} DESC, {q('run_after')}, {q('id')} LIMIT %s"
    if conn.features.has_select_for_update_skip_locked:
        sql += " FOR UPDATE SKIP LOCKED"
    return sql


def _pin_claim_plan(conn: Any) -> None:
    """PostgreSQL: make the claim walk a claim index in claim order and stop after
    ``limit`` rows, whatever the statistics say (this transaction only).

    A queue table's statistics are always stale: on a table that autovacuum has not
    analyzed yet, the planner reads every due run and sorts them (a 20,000-run backlog
    made each claim take 9 ms instead of 0.3 ms, and the cost grows with the backlog).
    """
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:
            cursor.execute("SELECT set_config('enable_bitmapscan', 'off', true), "
                           "set_config('enable_sort', 'off', true)")


def _prep_datetime(value: dt.datetime | None, conn: Any) -> Any:
    """A datetime as the ORM hands it to the database (a string on SQLite)."""
    return Run._meta.get_field("updated_at").get_db_prep_value(value, conn)


def _finish_outcomes(
    outcomes: Sequence[Outcome], worker_id: str, now: dt.datetime, using: str
) -> list[Run]:
    """Write the outcomes the lifecycle still allows; returns those runs (the caller
    saves their events).

    The usual case is written with the guard in the UPDATE itself (no read first, no
    row locks taken by one on PostgreSQL); what that leaves (a cancel request arrived,
    the run was rescued) goes through the read-then-write path, which decides each case."""
    changed, rest = _finish_guarded(outcomes, worker_id, now, using)
    if rest:
        changed += _finish_after_reading(rest, worker_id, now, using)
    return changed


def _finish_guarded(
    outcomes: Sequence[Outcome], worker_id: str, now: dt.datetime, using: str
) -> tuple[list[Run], list[Outcome]]:
    """UPDATE the runs still this worker's whose current status allows the outcome's
    target (one statement per set of columns on PostgreSQL); returns the runs written
    and the outcomes left undecided."""
    # Only outcomes with the claimed copy: the event state is built from it.
    groups = _assign_in_groups(((o.run, o.target, o.fields) for o in outcomes if o.run), now)
    done: dict[int, Run] = {}
    for names, group in groups.items():
        written = set(_update_rows(group, names, using, guard_worker=worker_id))
        done.update((run.pk, run) for run in group if run.pk in written)
    return list(done.values()), [o for o in outcomes if o.run_id not in done]


def _finish_after_reading(
    outcomes: Sequence[Outcome], worker_id: str, now: dt.datetime, using: str
) -> list[Run]:
    """Lock and read what the guard needs, decide each outcome in Python, write."""
    by_id = {o.run_id: o for o in outcomes}
    # Lock and read only what the guard needs; the rest of each row is in memory.
    current = (Run.objects.using(using).select_for_update().filter(pk__in=list(by_id))
               .order_by("id").values_list("id", "status", "worker_id"))
    unread = [o.run_id for o in outcomes if o.run is None]
    loaded = Run.objects.using(using).in_bulk(unread) if unread else {}
    moves: list[tuple[Run, Status, dict[str, Any]]] = []
    for run_id, status, owner in current:
        outcome = by_id[run_id]
        target = outcome_status(status, outcome.target)
        if owner != worker_id or status not in ALLOWED_FROM[target]:
            continue
        run = outcome.run or loaded[run_id]
        run.status = status  # the claimed copy may predate a cancel request
        moves.append((run, target, outcome.fields))
    for names, group in _assign_in_groups(moves, now).items():
        _update_rows(group, names, using)
    return [run for run, _, _ in moves]


def _assign_in_groups(
    moves: Iterable[tuple[Run, Status, dict[str, Any]]], now: dt.datetime
) -> dict[tuple[str, ...], list[Run]]:
    """Set each move's fields and status on its run (unsaved), grouped by the columns
    that changed: one UPDATE per group."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run, target, fields in moves:
        names = _assign(run, target, fields, now)
        groups.setdefault(tuple(sorted(names)), []).append(run)
    return groups


# (target, current status) pairs the lifecycle allows, as SQL: the guard of _update_rows.
_ALLOWED_MOVES_SQL = ", ".join(
    f"('{target}', '{source}')" for target, sources in sorted(ALLOWED_FROM.items())
    for source in sorted(sources)
)


def _update_rows(
    rows: Sequence[Run], names: Sequence[str], using: str, guard_worker: str | None = None
) -> list[int]:
    """``UPDATE`` the same columns of many rows; Django's bulk_update would build a CASE
    per field and row. Returns the ids written.

    PostgreSQL: ONE statement whose new values arrive as one JSON parameter (one
    statement to plan and run instead of one per row: a third of the database's CPU
    per run). With ``guard_worker``, a row is written only while that worker holds the
    run and the lifecycle allows the move from the run's current status to the new
    ``status`` (which must be among ``names``). SQLite: an executemany, which costs no
    round trips there; guarded, one statement per row (each must say whether it wrote).
    """
    conn = connections[using]
    quote = conn.ops.quote_name
    table = quote(Run._meta.db_table)
    fields = [Run._meta.get_field(name) for name in names]
    if conn.vendor == "postgresql":
        sets = ", ".join(f"{quote(field.column)} = x.{quote(field.column)}" for field in fields)
        data = [{"id": run.pk, **_json_row(run, conn, fields)} for run in rows]
        sql = (f"UPDATE {table} SET {sets} "
               f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS x "
               f"WHERE {table}.{quote('id')} = x.{quote('id')}")
        params = [raw.json_param(data)]
        if guard_worker is not None:
            status = quote("status")
            sql += (f" AND {table}.{quote('worker_id')} = %s AND (x.{status}, {table}.{status}) "
                    f"IN (VALUES {_ALLOWED_MOVES_SQL})")
            params.append(guard_worker)
        with conn.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING {table}.{quote('id')}", params)
            return [row[0] for row in cursor.fetchall()]
    sets = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    sql = f"UPDATE {table} SET {sets} WHERE {quote('id')} = %s"
    params = [
        [field.get_db_prep_save(getattr(run, field.attname), conn) for field in fields] + [run.pk]
        for run in rows
    ]
    with conn.cursor() as cursor:
        if guard_worker is None:
            cursor.executemany(sql, params)
            return [run.pk for run in rows]
        status = quote("status")
        sql += (f" AND {quote('worker_id')} = %s AND (%s, {status}) "
                f"IN (VALUES {_ALLOWED_MOVES_SQL}) RETURNING {quote('id')}")
        written = []
        for run, values in zip(rows, params, strict=True):
            cursor.execute(sql, [*values, guard_worker, str(run.status)])
            written += [row[0] for row in cursor.fetchall()]
        return written


def claim_run(run_id: int, worker_id: str, *, begin: bool = True,
              paused: pauses.PauseSet = pauses.NOTHING) -> Run | None:
    """Claim one specific run (engines that deliver run ids themselves, e.g. django-q2),
    ``running`` at once (``begin=False``: claimed ahead, like a worker's batch); not a
    run of a ``paused`` task or queue."""
    using = _db()
    now = timezone.now()
    conn = connections[using]
    with transaction.atomic(using=using):
        q = conn.ops.quote_name
        skip_tasks, skip_queues = sorted(paused.tasks), sorted(paused.queues)
        claimed = _claim_selected(
            f"SELECT {q('id')} FROM {q(Run._meta.db_table)} WHERE {q('id')} = %s "
            f"AND {q('run_after')} <= %s"  # a redelivered retry waits for its backoff
            + pauses.exclusion_sql(q, len(skip_tasks), len(skip_queues)),
            [run_id, _prep_datetime(now, conn), *skip_tasks, *skip_queues], worker_id, now, using,
            Status.RUNNING if begin else Status.CLAIMED,
        )
        _save_events([(run, "status") for run in claimed], using)
    return claimed[0] if claimed else None


def _claim_selected(
    sub_sql: str,
    sub_params: Sequence[Any],
    worker_id: str,
    now: dt.datetime,
    using: str,
    status: Status,
) -> list[Run]:
    """Mark the runs ``sub_sql`` (a query of run ids) picks as ``status`` (claimed, or
    running for a caller that begins them at once) for ``worker_id``, in ONE
    ``UPDATE … WHERE id IN (…) RETURNING`` statement (PostgreSQL, and SQLite ≥ 3.35):
    no separate id read and no reload. The UPDATE re-checks the status, so a run is
    never claimed twice. ``started_at`` is the first time a handler began, so only a
    running claim sets it. The caller saves the events."""
    conn = connections[using]
    q = conn.ops.quote_name
    when = _prep_datetime(now, conn)
    claimable = sorted(CLAIMABLE)
    started = (f"{q('started_at')} = COALESCE({q('started_at')}, %s), "
               if status == Status.RUNNING else "")
    sql = (
        f"UPDATE {q(Run._meta.db_table)} SET {q('status')} = %s, {q('worker_id')} = %s, "
        f"{q('attempt')} = {q('attempt')} + 1, {started}{q('updated_at')} = %s "
        f"WHERE {q('id')} IN ({sub_sql}) "
        f"AND {q('status')} IN ({', '.join(['%s'] * len(claimable))}) "
        f"RETURNING {_run_columns(conn)}"
    )
    params = [status.value, worker_id, *([when] if started else []), when, *sub_params, *claimable]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        claimed = _runs_from_rows(cursor.fetchall(), using)
    claimed.sort(key=lambda run: (-run.priority, run.run_after, run.pk))
    return claimed


def _run_columns(conn: Any) -> str:
    return raw.shape(Run, conn.alias).columns


def _runs_from_rows(found: Iterable[Sequence[Any]], using: str) -> list[Run]:
    return raw.instances(Run, found, using)


def take_hand_overs(executor: str, retry_after: float, limit: int,
                    paused: pauses.PauseSet = pauses.NOTHING) -> list[int]:
    """Mark up to ``limit`` waiting runs of ``executor`` as handed over and return their
    ids, for the engine's sweeper to hand over: due runs never handed over since they
    last changed (a failed hand-over, a retry, a rescued run), or handed over more than
    ``retry_after`` seconds ago and still not begun (a hand-over the engine lost).

    A read first (the usual answer is none, and on SQLite a write transaction would
    take the write lock), then one guarded UPDATE: of concurrent sweepers, one takes
    each run. Runs of ``paused`` tasks and queues wait until they are resumed.
    """
    using = _db()
    conn = connections[using]
    q = conn.ops.quote_name
    table = q(Run._meta.db_table)
    now = timezone.now()
    when = _prep_datetime(now, conn)
    statuses = ", ".join(f"'{status}'" for status in sorted(CLAIMABLE))  # as the index says
    waiting = (
        f"{q('status')} IN ({statuses}) AND {q('executor')} = %s AND {q('run_after')} <= %s "
        f"AND ({q('handed_at')} IS NULL OR {q('handed_at')} < {q('updated_at')} "
        f"OR {q('handed_at')} < %s)"
        + pauses.exclusion_sql(q, len(paused.tasks), len(paused.queues))
    )
    params = [executor, when, _prep_datetime(now - dt.timedelta(seconds=retry_after), conn),
              *sorted(paused.tasks), *sorted(paused.queues)]
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {q('id')} FROM {table} WHERE {waiting} "
                       f"ORDER BY {q('priority')} DESC, {q('run_after')}, {q('id')} LIMIT %s",
                       [*params, limit])
        run_ids = [row[0] for row in cursor.fetchall()]
    if not run_ids:
        return []
    with transaction.atomic(using=using), conn.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {q('handed_at')} = %s WHERE {q('id')} IN "
            f"({', '.join(['%s'] * len(run_ids))}) AND {waiting} RETURNING {q('id')}",
            [when, *run_ids, *params],
        )
        return sorted(row[0] for row in cursor.fetchall())


def clear_hand_overs(run_ids: Sequence[int]) -> None:
    """The hand-over of these runs failed: the next sweep hands them over again."""
    Run.objects.using(_db()).filter(pk__in=list(run_ids), status__in=sorted(CLAIMABLE)).update(
        handed_at=None)


def requeue(run_ids: Iterable[int], reason: str = "", worker_id: str | None = None) -> list[int]:
    """Give back held runs whose handlers never began: back to pending without using up
    an attempt, or canceled if a cancel was requested meanwhile (their handlers never
    run). With ``worker_id``, only runs that worker still holds."""
    using = _db()
    done = []
    for run_id in run_ids:
        with transaction.atomic(using=using):
            run = _locked(run_id, using)
            if run is None or run.status not in ACTIVE:
                continue
            if worker_id is not None and run.worker_id != worker_id:
                continue
            if run.status == Status.CANCEL_REQUESTED:
                _apply(run, Status.CANCELED, _unstarted_fields(run, CANCELED_UNSTARTED), using)
            else:
                _apply(run, Status.PENDING, _unstarted_fields(run, reason), using)
            done.append(run_id)
    return done


def _unstarted_fields(run: Run, reason: str = "") -> dict[str, Any]:
    """Give a claim back: the attempt its claim counted is not used up."""
    fields: dict[str, Any] = {"worker_id": "", "attempt": max(run.attempt - 1, 0)}
    if reason:
        fields["progress_message"] = reason
    return fields


# A held run whose cancel came before its handler began: canceled, attempt given back.
CANCELED_UNSTARTED = "canceled before it started"


def begin_runs(worker_id: str, started: dict[int, dt.datetime]) -> list[int]:
    """Record that the handlers of these claimed runs began (``started``: run id -> when):
    ``claimed`` -> ``running`` while ``worker_id`` still holds them; returns the ids
    moved. Written only for runs that outlive SHORT_RUN_WINDOW or begin late, so short
    runs go from claimed to their outcome with no write in between."""
    if not started:
        return []
    using = _db()
    now = timezone.now()
    with transaction.atomic(using=using):
        runs = list(Run.objects.using(using).select_for_update()
                    .filter(pk__in=list(started), worker_id=worker_id, status=Status.CLAIMED)
                    .order_by("id"))
        for run in runs:
            changed = _assign(run, Status.RUNNING,
                              {"started_at": run.started_at or started[run.pk]}, now)
            run.save(using=using, update_fields=changed)
        _save_events([(run, "status") for run in runs], using)
    return [run.pk for run in runs]


def cancel_unstarted(run_id: int, worker_id: str) -> Run | None:
    """End a run whose cancel was requested before its handler began (its worker gives
    it up without running it): canceled."""
    using = _db()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None or run.worker_id != worker_id or run.status != Status.CANCEL_REQUESTED:
            return None
        return _apply(run, Status.CANCELED, _unstarted_fields(run, CANCELED_UNSTARTED), using)


def _locked(run_id: int, using: str) -> Run | None:
    """The run, row-locked until the surrounding transaction ends (None if deleted)."""
    return Run.objects.using(using).select_for_update().filter(pk=run_id).first()


# ---------------------------------------------------------------- workers


def register_worker(worker_id: str, hostname: str, pid: int, queues: list[str], concurrency: int) -> Worker:
    now = timezone.now()
    worker, _ = Worker.objects.using(_db()).update_or_create(
        pk=worker_id,
        defaults={
            "hostname": hostname,
            "pid": pid,
            "queues": queues,
            "concurrency": concurrency,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
            "lost_at": None,
        },
    )
    return worker


def heartbeat(worker_id: str, processed: int) -> None:
    Worker.objects.using(_db()).filter(pk=worker_id).update(
        heartbeat_at=timezone.now(), processed=processed, stopped_at=None, lost_at=None
    )


def mark_lost_workers(heartbeat_timeout: float) -> int:
    """Mark the workers whose heartbeat expired (not stopped) as lost; returns how many.
    A lost worker that heartbeats again is alive again (:func:`heartbeat`)."""
    now = timezone.now()
    return Worker.objects.using(_db()).filter(
        stopped_at__isnull=True, lost_at__isnull=True,
        heartbeat_at__lt=now - dt.timedelta(seconds=heartbeat_timeout),
    ).update(lost_at=now)


def prune_workers(days: float, now: dt.datetime | None = None) -> int:
    """Delete the rows of workers stopped or lost more than ``days`` days ago (their
    runs keep their worker ids as text); returns how many."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=days)
    gone = Q(stopped_at__lt=cutoff) | Q(stopped_at__isnull=True, heartbeat_at__lt=cutoff)
    return Worker.objects.using(_db()).filter(gone).delete()[0]


def take_lease(name: str, holder: str, seconds: float) -> bool:
    """Take the lease ``name`` for ``seconds`` unless someone holds it: one conditional
    UPDATE (or the first INSERT), so of many workers asking at once exactly one gets
    it. Used by periodic jobs that one worker at a time should do (retention)."""
    using = _db()
    now = timezone.now()
    until = now + dt.timedelta(seconds=seconds)
    leases = Lease.objects.using(using)
    if leases.filter(pk=name, until__lte=now).update(holder=holder, until=until):
        return True
    if leases.filter(pk=name).exists():
        return False
    try:
        with transaction.atomic(using=using):
            leases.create(name=name, holder=holder, until=until)
        return True
    except IntegrityError:  # another worker created it at the same moment
        return False


def stop_worker(worker_id: str) -> None:
    Worker.objects.using(_db()).filter(pk=worker_id).update(stopped_at=timezone.now())


def cancel_requested(worker_id: str) -> dict[int, dt.datetime]:
    """Runs of this worker whose cancel was requested: id -> when."""
    return dict(
        Run.objects.using(_db())
        .filter(worker_id=worker_id, status=Status.CANCEL_REQUESTED)
        .values_list("id", "cancel_requested_at")
    )


def active_claims(worker_id: str) -> dict[int, dt.datetime]:
    """The runs ``worker_id`` holds (claimed and not ended): id -> ``updated_at``, which
    a new claim of the same run changes."""
    return dict(Run.objects.using(_db()).filter(worker_id=worker_id, status__in=sorted(ACTIVE))
                .values_list("id", "updated_at"))


def recover_lost_runs(heartbeat_timeout: float, worker_id: str | None = None) -> list[Run]:
    """Rescue active runs of workers whose heartbeat expired (or of ``worker_id``).

    A run goes back to pending when attempts remain, else fails with "worker lost".
    Each rescue is a guarded transition under a row lock: a run is rescued once.
    """
    using = _db()
    if worker_id is None:
        mark_lost_workers(heartbeat_timeout)  # the rows say what recovery decided
        cutoff = timezone.now() - dt.timedelta(seconds=heartbeat_timeout)
        alive = Worker.objects.using(using).filter(heartbeat_at__gte=cutoff, stopped_at__isnull=True)
        lost_qs = Run.objects.using(using).filter(status__in=sorted(ACTIVE)).exclude(
            worker_id__in=alive.values("id")
        ).exclude(kind__in=sorted(flows.KINDS))  # no worker holds a chain's or group's parent
    else:
        lost_qs = Run.objects.using(using).filter(status__in=sorted(ACTIVE), worker_id=worker_id)
    rescued = []
    for run_id in lost_qs.values_list("id", flat=True):
        with transaction.atomic(using=using):
            run = _locked(run_id, using)
            if run is None or run.status not in ACTIVE:
                continue
            if worker_id is None and worker_alive(run.worker_id, heartbeat_timeout, using):
                continue  # its worker came back between the two queries
            rescued.append(_rescue(run, using))
    return rescued


def _rescue(run: Run, using: str) -> Run:
    """End a lost worker's hold on ``run``. A handler that never began (``claimed``)
    costs no attempt: the run is pending again at once. That is bounded: a run lost
    with its worker LOST_CLAIMS_LIMIT times while claimed (one that takes its worker
    down within SHORT_RUN_WINDOW of beginning) counts the next loss as an attempt."""
    if run.status == Status.CLAIMED and run.claims_lost < conf.get("LOST_CLAIMS_LIMIT"):
        fields = _attempt_error_fields(run, "WorkerLost",
                                       "worker lost before the handler began (not counted)")
        fields["errors"][-1]["counted"] = False
        fields.update(attempt=max(run.attempt - 1, 0), claims_lost=run.claims_lost + 1)
        return _apply(run, Status.PENDING, fields, using)
    message = "worker lost"
    if run.status == Status.CLAIMED:
        message = f"worker lost {run.claims_lost + 1} times while holding this run"
    return _release(run, "WorkerLost", message, using)


def release(run_id: int, error_type: str, message: str, *, counts: bool = True) -> Run | None:
    """End this attempt of an active run that its executor lost (crash, kill, shutdown):
    back to pending when attempts remain, else failed; canceled if a cancel was asked.

    ``counts=False`` (the operator stopped the worker) always puts the run back to
    pending without using up an attempt; the interruption is still kept in ``errors``.
    """
    using = _db()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None or run.status not in ACTIVE:
            return None
        if counts or run.status == Status.CANCEL_REQUESTED:
            return _release(run, error_type, message, using)
        fields = _attempt_error_fields(run, error_type, message)
        fields["attempt"] = max(run.attempt - 1, 0)
        return _apply(run, Status.PENDING, fields, using)


def end_killed_run(run_id: int, target: Status, error_type: str, message: str) -> Run | None:
    """Record that the worker killed a run's executor (hard timeout or unheeded cancel)."""
    using = _db()
    with transaction.atomic(using=using):
        run = _locked(run_id, using)
        if run is None or run.status not in ALLOWED_FROM[target]:
            return None
        fields = _attempt_error_fields(run, error_type, message)
        fields.update(error=message, error_type=error_type)
        return _apply(run, target, fields, using)


def _attempt_error_fields(run: Run, error_type: str, message: str) -> dict[str, Any]:
    """Close the run's current attempt with an error entry (kept per attempt)."""
    error = {"attempt": run.attempt, "type": error_type, "message": message,
             "worker": run.worker_id, "at": timezone.now().isoformat()}
    return {
        "errors": [*run.errors, error],
        "worker_ids": [*run.worker_ids, run.worker_id],
        "worker_id": "",
    }


def _release(run: Run, error_type: str, message: str, using: str) -> Run:
    fields = _attempt_error_fields(run, error_type, message)
    if run.status == Status.CANCEL_REQUESTED:
        target = Status.CANCELED
    elif run.attempt < run.max_attempts:
        target = Status.PENDING
    else:
        target = Status.FAILED
        fields.update(error=message, error_type=error_type)
    return _apply(run, target, fields, using)


def has_due(queues: Sequence[str] | None, paused: pauses.PauseSet = pauses.NOTHING) -> bool:
    """A cheap read (no write lock) before trying a claim: are runs due that this
    worker may claim (not of ``paused`` tasks or queues)?"""
    due = Run.objects.using(_db()).filter(
        status__in=sorted(CLAIMABLE), run_after__lte=timezone.now(), executor=executors.BUILTIN
    )
    if paused:
        shape = pauses.claim_shape(paused, queues)
        if shape is None:
            return False
        queues = shape.queues
        due = due.exclude(task_name__in=shape.skip_tasks).exclude(queue__in=shape.skip_queues)
    if queues:
        due = due.filter(queue__in=list(queues))
    return due.exists()


def worker_alive(worker_id: str, heartbeat_timeout: float, using: str | None = None) -> bool:
    using = using or _db()
    cutoff = timezone.now() - dt.timedelta(seconds=heartbeat_timeout)
    return Worker.objects.using(using).filter(
        pk=worker_id, heartbeat_at__gte=cutoff, stopped_at__isnull=True
    ).exists()


# ---------------------------------------------------------------- admin listings


def run_events(run_id: int, limit: int = 50) -> list[RunEvent]:
    """The newest ``limit`` events of one run, newest first (the run's timeline)."""
    return list(RunEvent.objects.using(_db()).filter(run_id=run_id).order_by("-id")[:limit])


def tasks_with_latest_run() -> QuerySet[Task]:
    """Task rows annotated with ``latest_run_id`` and ``latest_run_status`` (or None)."""
    latest = Run.objects.using(_db()).filter(task_name=OuterRef("name")).order_by("-id")
    return Task.objects.using(_db()).annotate(
        latest_run_id=Subquery(latest.values("id")[:1]),
        latest_run_status=Subquery(latest.values("status")[:1]),
    )


def task_names() -> list[str]:
    """Names of the ``Task`` rows (registered handlers seen so far), sorted."""
    return list(Task.objects.using(_db()).order_by("name").values_list("name", flat=True))


# ---------------------------------------------------------------- tasks and schedules


def sync_tasks(specs: Iterable[Any]) -> None:
    """Upsert one ``Task`` row per registered handler."""
    for spec in specs:
        Task.objects.using(_db()).update_or_create(
            name=spec.name, defaults={"options": spec.options(), "description": spec.description}
        )


def sync_code_schedules(specs: Iterable[Any]) -> None:
    """Create or update the schedules declared with ``@task(cron=...)``.

    A changed cron or time zone resets ``next_run_at`` so the next tick recomputes it;
    ``enabled`` is left alone so a schedule disabled in the admin stays disabled.
    """
    using = _db()
    for spec in specs:
        if not spec.cron:
            continue
        wanted = {"task_name": spec.name, "cron": spec.cron, "timezone": spec.cron_timezone,
                  "queue": spec.queue, "from_code": True}
        with transaction.atomic(using=using):
            schedule = (Schedule.objects.using(using).select_for_update()
                        .filter(name=f"code:{spec.name}").first())
            if schedule is None:
                try:
                    with transaction.atomic(using=using):
                        Schedule.objects.using(using).create(name=f"code:{spec.name}", **wanted)
                except IntegrityError:
                    pass  # another worker created it at the same moment
                continue
            changed = {k: v for k, v in wanted.items() if getattr(schedule, k) != v}
            if not changed:
                continue
            if "cron" in changed or "timezone" in changed:
                changed["next_run_at"] = None
            Schedule.objects.using(using).filter(pk=schedule.pk).update(**changed)


def save_schedule(schedule: Schedule) -> Schedule:
    """Insert or update a (validated) schedule row."""
    schedule.save(using=_db())
    return schedule


def due_schedules(now: dt.datetime) -> list[Schedule]:
    """Enabled schedules whose next fire time has come, or that were never evaluated."""
    return list(
        Schedule.objects.using(_db()).filter(enabled=True).filter(
            Q(next_run_at__lte=now) | Q(next_run_at__isnull=True)
        ).order_by("pk")
    )


def advance_schedule(
    schedule_id: int,
    expected: dt.datetime | None,
    next_run_at: dt.datetime,
    fired_at: dt.datetime | None,
) -> bool:
    """Move a schedule's ``next_run_at`` from ``expected`` on (compare-and-set).

    Returns False when another worker advanced it first, so a slow worker never moves
    a schedule back in time.
    """
    updates: dict[str, Any] = {"next_run_at": next_run_at}
    if fired_at is not None:
        updates["last_run_at"] = fired_at
    qs = Schedule.objects.using(_db()).filter(pk=schedule_id)
    qs = qs.filter(next_run_at__isnull=True) if expected is None else qs.filter(next_run_at=expected)
    return qs.update(**updates) == 1


# ---------------------------------------------------------------- retention


def prunable_runs(keep_last: int | None, days: float | None, now: dt.datetime | None = None) -> QuerySet[Run]:
    """Terminal runs outside the retention policy.

    A run is kept while it is among the newest ``keep_last`` terminal runs of its task
    *or* finished less than ``days`` days ago; it is prunable only when every limit that
    is set lets it go. Runs that are not finished are never prunable.
    """
    using = _db()
    terminal = Run.objects.using(using).filter(status__in=sorted(TERMINAL))
    if keep_last is None and days is None:
        return terminal.none()
    doomed = Q()
    if days is not None:
        doomed &= Q(finished_at__lt=(now or timezone.now()) - dt.timedelta(days=days))
    if keep_last is not None:
        # Per task, the id of the newest run beyond the kept ones: one short index scan
        # each (tl_run_task_status), instead of a list of every kept id.
        beyond = Q(pk__in=[])
        names = terminal.order_by().values_list("task_name", flat=True).distinct()
        for name in names:
            cut = (terminal.filter(task_name=name).order_by("-id")
                   .values_list("id", flat=True)[keep_last:keep_last + 1].first())
            if cut is not None:
                beyond |= Q(task_name=name, id__lte=cut)
        doomed &= beyond
    return terminal.filter(doomed)


# Bounds of prune()'s limits: beyond them the database fails (bigint out of range, date
# out of range, too many SQL variables in one batch) instead of meaning anything more.
PRUNE_MAX_KEEP_LAST = 10**9
PRUNE_MAX_DAYS = 36_525  # a century
PRUNE_MAX_BATCH = 10_000


def prune(
    keep_last: int | None,
    days: float | None,
    dry_run: bool = False,
    batch_size: int = 1000,
    now: dt.datetime | None = None,
    *,
    max_batches: int | None = None,
    pause: float = 0.0,
) -> dict[str, int]:
    """Delete the runs :func:`prunable_runs` selects, with their events, in batches.

    Each batch is its own short transaction, so a prune of a million runs never holds
    the database (or SQLite's write lock) for long. Returns what was (or, with
    ``dry_run``, would be) deleted: ``{"runs": n, "events": m}``. Automatic retention
    bounds its pace: at most ``max_batches`` batches, ``pause`` seconds apart.
    """
    if keep_last is not None and (type(keep_last) is not int or keep_last < 0):
        raise ValueError(f"keep_last must be an integer >= 0 or None, got {keep_last!r}.")
    if days is not None and (type(days) not in (int, float) or not 0 <= days < float("inf")):
        raise ValueError(f"days must be a number >= 0 or None, got {days!r}.")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    for name, value, maximum in (("keep_last", keep_last, PRUNE_MAX_KEEP_LAST),
                                 ("days", days, PRUNE_MAX_DAYS),
                                 ("batch_size", batch_size, PRUNE_MAX_BATCH)):
        if value is not None and value > maximum:
            raise ValueError(f"{name} must be at most {maximum}, got {value!r}.")
    using = _db()
    qs = prunable_runs(keep_last, days, now)
    if dry_run:
        return {"runs": qs.count(),
                "events": RunEvent.objects.using(using).filter(run__in=qs.values("id")).count()}
    counts = {"runs": 0, "events": 0}
    batches = 0
    while (max_batches is None or batches < max_batches) and (
        ids := list(qs.order_by().values_list("id", flat=True)[:batch_size])
    ):
        if batches and pause:
            time.sleep(pause)  # let other writers (SQLite's one lock) in between batches
        batches += 1
        with transaction.atomic(using=using):
            counts["events"] += RunEvent.objects.using(using).filter(run_id__in=ids).delete()[0]
            # Select, then update by pk: SQLite's UPDATE ... WHERE rerun_of_id IN (...)
            # scans the whole table instead of using the rerun_of index.
            reruns = list(Run.objects.using(using).filter(rerun_of_id__in=ids).values_list("id", flat=True))
            if reruns:
                Run.objects.using(using).filter(pk__in=reruns).update(rerun_of=None)
            # A flow's children outlive a pruned parent (and the other way round).
            Run.objects.using(using).filter(parent_id__in=ids).update(parent=None)
            counts["runs"] += _delete_rows(Run, ids, using)
    return counts


def _delete_rows(model: Any, ids: list[int], using: str) -> int:
    """``DELETE ... WHERE id IN (ids)`` in one statement.

    The ORM's ``delete()`` loads every row to collect cascades (about 10x slower here);
    the callers delete the dependent rows (events, rerun links) themselves first.
    """
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    column = connection.ops.quote_name(model._meta.pk.column)
    marks = ", ".join(["%s"] * len(ids))  # names come from _meta; ids are parameters
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
        return cursor.rowcount


# ---------------------------------------------------------------- bulk moves (admin)


def transition_many(
    run_ids: Sequence[int], target: Status, from_statuses: Iterable[str], **fields: Any
) -> list[Run]:
    """Move those of ``run_ids`` whose status is in ``from_statuses`` (and from which the
    lifecycle allows ``target``) to ``target`` in ONE transaction: one UPDATE, one event
    INSERT. Returns the runs moved; the others are left as they are.

    For bulk actions: ``transition`` per run costs a transaction and three statements
    each (8,361 runs took 5.8 s); callers pass bounded batches so no transaction is long.
    """
    using = _db()
    allowed = sorted(set(from_statuses) & ALLOWED_FROM[target])
    if not run_ids or not allowed:
        return []
    with transaction.atomic(using=using):
        moving = list(Run.objects.using(using).select_for_update()
                      .filter(pk__in=list(run_ids), status__in=allowed).order_by("id"))
        if not moving:
            return []
        now = timezone.now()
        for run in moving:
            changed = _assign(run, target, fields, now)
        # The same values for every row (status, updated_at, finished_at, fields): one UPDATE.
        Run.objects.using(using).filter(pk__in=[run.pk for run in moving]).update(
            **{name: getattr(moving[0], name) for name in changed})
        _save_events([(run, "status") for run in moving], using)
    return moving
