"""The persistence layer: every query on runs, their events, workers and schedules.

Views, the worker, the runner and the stream go through these functions. Each write
appends ``RunEvent`` rows in the same transaction and hands them to
:func:`events.publish`, which pushes them to the channel layer after commit.
Claims run in short transactions; handlers never run inside one.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import DateTimeField, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from . import events
from .models import Run, RunEvent, Schedule, Task, Worker
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
    rerun_of_id: int | None = None
    schedule_id: int | None = None
    fire_time: dt.datetime | None = None
    owner_id: int | None = None


def _save_events(changes: Sequence[tuple[Run, str]], using: str) -> None:
    """Append one ``RunEvent`` per (run, kind) with the run's current state, and push
    them to the channel layer after commit."""
    if not changes:
        return
    rows, states = _event_rows(changes, connections[using])
    _publish_events(_insert_rows(RunEvent, rows, using), changes, states, using)


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
        cursor.execute(sql, [_json_param(rows)])
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


def _json_param(value: Any) -> str:
    """``value`` as the one JSON parameter of a batched statement (compact text)."""
    return json.dumps(value, separators=(",", ":"))


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
    now = timezone.now()
    created = [
        Run(
            **{k: v for k, v in vars(new).items() if k != "run_after"},
            run_after=new.run_after or now,
            created_at=now,
            updated_at=now,
        )
        for new in new_runs
    ]
    if conn.vendor == "postgresql":
        _insert_runs_with_events(created, using)
        return created
    with transaction.atomic(using=using):
        _set_ids(created, _insert_rows(Run, [_json_row(run, conn) for run in created], using),
                 using)
        _save_events([(run, "created") for run in created], using)
    return created


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
        cursor.execute(sql, [_json_param(run_rows), _json_param(event_rows)])
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
) -> QuerySet[Run]:
    """Runs matching the filters, newest first (the listing the admin and stream use)."""
    qs = Run.objects.using(_db()).order_by("-id")
    if task:
        qs = qs.filter(task_name__in=list(task))
    if status:
        qs = qs.filter(status__in=list(status))
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


def settled_event_id(age: float) -> int:
    """The newest event id written at least ``age`` seconds ago.

    Where the stream's cursor starts: on PostgreSQL a younger id may still have an
    uncommitted neighbour below it, so the stream reads forward from here instead.
    When every event is young, it is just below the oldest one: the ids under it were
    never committed or were pruned (a sequence does not restart at 1 after deletes,
    and waiting out such a "hole" would delay the first live events for nothing).
    """
    qs = RunEvent.objects.using(_db()).order_by("-id")
    if age > 0:
        qs = qs.filter(created_at__lte=timezone.now() - dt.timedelta(seconds=age))
    settled = qs.values_list("id", flat=True).first()
    if settled is not None:
        return settled
    oldest = oldest_event_id()
    return oldest - 1 if oldest else 0


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
        fields["updated_at"] = timezone.now()
        for name, value in fields.items():
            setattr(run, name, value)
        run.save(using=using, update_fields=list(fields))
        _save_events([(run, "progress")], using)
    return run.status


# ---------------------------------------------------------------- claiming


def claim(worker_id: str, queues: Sequence[str] | None, limit: int) -> list[Run]:
    """Claim up to ``limit`` due runs for ``worker_id`` in one short transaction.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so concurrent workers never block or share.
    SQLite: the transaction takes the write lock at BEGIN (``transaction_mode``
    IMMEDIATE), and the UPDATE re-checks the status so a run is never claimed twice.
    """
    return settle([], worker_id, queues, limit)[1]


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
    outcomes: Sequence[Outcome], worker_id: str, queues: Sequence[str] | None, limit: int
) -> tuple[list[Run], list[Run]]:
    """Record finished attempts and claim new runs in ONE transaction (one commit).

    The worker's hot path: a commit costs milliseconds on a durable database, so the
    supervisor batches every outcome its executors reported since the last round with
    the next claim. An outcome is written only while the run is still this worker's
    and the lifecycle allows the move (a rescued run is not overwritten).
    """
    using = _db()
    now = timezone.now()
    with transaction.atomic(using=using):
        finished = _finish_outcomes(outcomes, worker_id, now, using) if outcomes else []
        claimed: list[Run] = []
        if limit > 0:
            sql, params = _due_selection(connections[using], queues, limit, now)
            claimed = _claim_selected(sql, params, worker_id, now, using)
        # One INSERT for both sets of events (outcomes first: they happened first).
        _save_events([(run, "status") for run in [*finished, *claimed]], using)
    return finished, claimed


def claim_plan(queues: Sequence[str] | None = None, limit: int = 100) -> str:
    """The database's plan for a claim's selection of due runs (EXPLAIN; on PostgreSQL
    EXPLAIN ANALYZE, rolled back): to check that claims read an index in claim order."""
    using = _db()
    conn = connections[using]
    prefix = "EXPLAIN ANALYZE " if conn.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    with transaction.atomic(using=using), conn.cursor() as cursor:
        sql, params = _due_selection(conn, queues, limit, timezone.now())
        cursor.execute(prefix + sql, params)
        plan = "\n".join(" | ".join(str(c) for c in row) for row in cursor.fetchall())
        transaction.set_rollback(True, using=using)
    return plan


def _due_selection(
    conn: Any, queues: Sequence[str] | None, limit: int, now: dt.datetime
) -> tuple[str, list[Any]]:
    """The claim's selection of due runs as (sql, params), its plan pinned for the
    current transaction."""
    queues = list(queues or [])
    _pin_claim_plan(conn)
    return _due_sql(conn.alias, len(queues)), [_prep_datetime(now, conn), *queues, limit]


@functools.cache
def _due_sql(alias: str, queue_count: int) -> str:
    """The ids of due runs (of ``queue_count`` queues, 0: any) in claim order, locked
    without waiting where the database can: the claim's selection. Built once per
    shape; the ORM took longer to build it than the database to run it."""
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
    if queue_count:
        sql += f" AND {q('queue')} IN ({', '.join(['%s'] * queue_count)})"
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

    PostgreSQL writes the usual case with the guard in the UPDATE itself (no row
    locks taken by a read first); what that leaves (a cancel request arrived, the run
    was rescued) goes through the read-then-write path, which decides each case."""
    rest = list(outcomes)
    changed: list[Run] = []
    if _is_postgres(using):
        changed, rest = _finish_guarded(rest, worker_id, now, using)
    if rest:
        changed += _finish_after_reading(rest, worker_id, now, using)
    return changed


def _finish_guarded(
    outcomes: Sequence[Outcome], worker_id: str, now: dt.datetime, using: str
) -> tuple[list[Run], list[Outcome]]:
    """PostgreSQL: UPDATE the runs still this worker's whose current status allows the
    outcome's target, in one statement per set of columns; returns the runs written
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
    round trips there (unguarded).
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
        params = [_json_param(data)]
        if guard_worker is not None:
            status = quote("status")
            sql += (f" AND {table}.{quote('worker_id')} = %s AND (x.{status}, {table}.{status}) "
                    f"IN (VALUES {_ALLOWED_MOVES_SQL})")
            params.append(guard_worker)
        with conn.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING {table}.{quote('id')}", params)
            return [row[0] for row in cursor.fetchall()]
    assert guard_worker is None, "the guarded UPDATE is PostgreSQL's"
    sets = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    sql = f"UPDATE {table} SET {sets} WHERE {quote('id')} = %s"
    params = [
        [field.get_db_prep_save(getattr(run, field.attname), conn) for field in fields] + [run.pk]
        for run in rows
    ]
    with conn.cursor() as cursor:
        cursor.executemany(sql, params)
    return [run.pk for run in rows]


def claim_run(run_id: int, worker_id: str) -> Run | None:
    """Claim one specific run (engines that deliver run ids themselves, e.g. django-q2)."""
    using = _db()
    now = timezone.now()
    with transaction.atomic(using=using):
        q = connections[using].ops.quote_name
        claimed = _claim_selected(
            f"SELECT {q('id')} FROM {q(Run._meta.db_table)} WHERE {q('id')} = %s", [run_id],
            worker_id, now, using,
        )
        _save_events([(run, "status") for run in claimed], using)
    return claimed[0] if claimed else None


def _claim_selected(
    sub_sql: str, sub_params: Sequence[Any], worker_id: str, now: dt.datetime, using: str
) -> list[Run]:
    """Mark the runs ``sub_sql`` (a query of run ids) picks as running for
    ``worker_id``, in ONE ``UPDATE … WHERE id IN (…) RETURNING`` statement (PostgreSQL,
    and SQLite ≥ 3.35): no separate id read and no reload. The UPDATE re-checks the
    status, so a run is never claimed twice. The caller saves the events."""
    conn = connections[using]
    q = conn.ops.quote_name
    when = _prep_datetime(now, conn)
    claimable = sorted(CLAIMABLE)
    sql = (
        f"UPDATE {q(Run._meta.db_table)} SET {q('status')} = %s, {q('worker_id')} = %s, "
        f"{q('attempt')} = {q('attempt')} + 1, "
        f"{q('started_at')} = COALESCE({q('started_at')}, %s), {q('updated_at')} = %s "
        f"WHERE {q('id')} IN ({sub_sql}) "
        f"AND {q('status')} IN ({', '.join(['%s'] * len(claimable))}) "
        f"RETURNING {_run_columns(conn)}"
    )
    params = [Status.RUNNING.value, worker_id, when, when, *sub_params, *claimable]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        claimed = _runs_from_rows(cursor.fetchall(), using)
    claimed.sort(key=lambda run: (-run.priority, run.run_after, run.pk))
    return claimed


def _run_columns(conn: Any) -> str:
    return _run_row_shape(conn.alias)[0]


@functools.cache
def _run_row_shape(alias: str) -> tuple[str, list[str], list[tuple[int, Any, list[Any]]]]:
    """For rows of every ``Run`` column: the column list, the attribute names and the
    ORM's converters per column (JSON, datetimes), worked out once per database."""
    conn = connections[alias]
    fields = Run._meta.concrete_fields
    converters = []
    for index, model_field in enumerate(fields):
        col = model_field.get_col(Run._meta.db_table)
        found = conn.ops.get_db_converters(col) + model_field.get_db_converters(conn)
        if found:
            converters.append((index, col, found))
    columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
    return columns, [f.attname for f in fields], converters


def _runs_from_rows(rows: Iterable[Sequence[Any]], using: str) -> list[Run]:
    """``Run`` instances from rows of :func:`_run_columns`, converted the way the ORM
    converts them but without a queryset's per-row machinery."""
    conn = connections[using]
    _, attnames, converters = _run_row_shape(using)
    runs = []
    for row in rows:
        values = list(row)
        for index, col, found in converters:
            for convert in found:
                values[index] = convert(values[index], col, conn)
        runs.append(Run.from_db(using, attnames, values))
    return runs


def requeue(run_ids: Iterable[int], reason: str = "") -> list[int]:
    """Put claimed runs that never started back to pending; the attempt is not counted."""
    using = _db()
    done = []
    for run_id in run_ids:
        with transaction.atomic(using=using):
            run = _locked(run_id, using)
            if run is None or run.status not in ALLOWED_FROM[Status.PENDING]:
                continue
            fields = {"worker_id": "", "attempt": max(run.attempt - 1, 0)}
            if reason:
                fields["progress_message"] = reason
            _apply(run, Status.PENDING, fields, using)
            done.append(run_id)
    return done


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
        },
    )
    return worker


def heartbeat(worker_id: str, processed: int) -> None:
    Worker.objects.using(_db()).filter(pk=worker_id).update(
        heartbeat_at=timezone.now(), processed=processed, stopped_at=None
    )


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
        cutoff = timezone.now() - dt.timedelta(seconds=heartbeat_timeout)
        alive = Worker.objects.using(using).filter(heartbeat_at__gte=cutoff, stopped_at__isnull=True)
        lost_qs = Run.objects.using(using).filter(status__in=sorted(ACTIVE)).exclude(
            worker_id__in=alive.values("id")
        )
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
            rescued.append(_release(run, "WorkerLost", "worker lost", using))
    return rescued


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


def has_due(queues: Sequence[str] | None) -> bool:
    """A cheap read (no write lock) before trying a claim."""
    due = Run.objects.using(_db()).filter(
        status__in=sorted(CLAIMABLE), run_after__lte=timezone.now()
    )
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


def prune(
    keep_last: int | None,
    days: float | None,
    dry_run: bool = False,
    batch_size: int = 1000,
    now: dt.datetime | None = None,
) -> dict[str, int]:
    """Delete the runs :func:`prunable_runs` selects, with their events, in batches.

    Each batch is its own short transaction, so a prune of a million runs never holds
    the database (or SQLite's write lock) for long. Returns what was (or, with
    ``dry_run``, would be) deleted: ``{"runs": n, "events": m}``.
    """
    if keep_last is not None and (type(keep_last) is not int or keep_last < 0):
        raise ValueError(f"keep_last must be an integer >= 0 or None, got {keep_last!r}.")
    if days is not None and (type(days) not in (int, float) or not 0 <= days < float("inf")):
        raise ValueError(f"days must be a number >= 0 or None, got {days!r}.")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    using = _db()
    qs = prunable_runs(keep_last, days, now)
    if dry_run:
        return {"runs": qs.count(),
                "events": RunEvent.objects.using(using).filter(run__in=qs.values("id")).count()}
    counts = {"runs": 0, "events": 0}
    while ids := list(qs.order_by().values_list("id", flat=True)[:batch_size]):
        with transaction.atomic(using=using):
            counts["events"] += RunEvent.objects.using(using).filter(run_id__in=ids).delete()[0]
            # Select, then update by pk: SQLite's UPDATE ... WHERE rerun_of_id IN (...)
            # scans the whole table instead of using the rerun_of index.
            reruns = list(Run.objects.using(using).filter(rerun_of_id__in=ids).values_list("id", flat=True))
            if reruns:
                Run.objects.using(using).filter(pk__in=reruns).update(rerun_of=None)
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
