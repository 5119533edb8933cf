"""Admission of limited runs: the queries that apply :mod:`.limits` (composed by store).

The claim query knows nothing of limits. A limited run is created ``pending`` with one
``RunLimit`` row per key it needs and ``run_after`` far ahead (``WAITING_UNTIL``), so no
worker claims it; it is *admitted* by giving it its real ``run_after`` (now, or when a
rate window opens or a cooldown ends) once every key has room. Admission happens in the
transactions that change a key's use:

- a start (its own runs, and any run of the key that could have started),
- a limited run reaching a finished status (its slots are freed; store._save_events),
- a rate-limited run's recorded start (``running``, or its outcome's ``started_at``:
  the moment its handler began) is counted, and the next one admitted,
- the supervisors' sweep (runs that became due, slots freed by deleted runs, an
  admission lost to a key that was busy in another transaction).

Each locks the keys it changes in key order (``SELECT … FOR UPDATE``; SQLite serializes
writers at BEGIN), then takes the candidates' run rows and any other key they need with
``SKIP LOCKED``: a run or key busy in another transaction is left to that transaction
(or the sweep), so two transactions never wait on each other in a cycle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.utils import timezone

from . import limits, raw
from .models import LimitKey, Run, RunLimit
from .states import CLAIMABLE, TERMINAL

# A waiting run's run_after: later than anything a claim asks for.
WAITING_UNTIL = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
# Waiting rows read per key beyond its cap when runs of it need other keys too (those
# keys may hold them back, and the runs behind them may start instead).
EXTRA_CANDIDATES = 8
# Keys with waiting runs one sweep looks at.
SWEEP_KEYS = 100
WAITING, HOLDING = "tl_limit_waiting", "tl_limit_holding"  # see RunLimit.Meta.indexes
# Booleans as the partial indexes spell them (SQLite uses one only when the query's
# WHERE visibly implies the index's).
TRUE, FALSE = {"sqlite": "1", "postgresql": "true"}, {"sqlite": "0", "postgresql": "false"}


@dataclass(frozen=True)
class Admission:
    """A waiting run let go: its run_after (now or when a window opens) and reason."""

    run_id: int
    run_after: dt.datetime
    message: str


@dataclass
class Waiting:
    """A run being created with limits: the keys it needs and its own run_after."""

    run: Run
    needs: list[limits.Need]
    due: dt.datetime


def is_waiting(run: Run) -> bool:
    """Is ``run`` a limited run not admitted yet (its progress message says why)?"""
    return bool(run.limited) and run.status in CLAIMABLE and run.run_after == WAITING_UNTIL


def hold_back(run: Run, needs: list[limits.Need]) -> Waiting:
    """Make an unsaved run wait for admission (not claimable until admitted)."""
    waiting = Waiting(run, needs, run.run_after)
    run.limited = limits.bits(needs)
    run.run_after = WAITING_UNTIL
    run.progress_message = limits.waiting_reason(needs[0].key)
    return waiting


def on_create(created: Sequence[Waiting], using: str) -> list[Admission]:
    """Store the keys of runs just inserted and admit what has room (theirs and any
    other run of those keys); returns the admissions (the caller writes them)."""
    figures: dict[str, limits.Need] = {}
    rows = []
    for entry in created:
        for need in entry.needs:
            figures.setdefault(need.key, need)
            rows.append(RunLimit(run_id=entry.run.pk, key=need.key, priority=entry.run.priority,
                                 due=entry.due, needs=len(entry.needs)))
    keys = sorted(figures)
    LimitKey.objects.using(using).bulk_create(
        [LimitKey(key=key, cap=figures[key].cap, rate=figures[key].rate,
                  window=figures[key].window) for key in keys],
        ignore_conflicts=True)
    RunLimit.objects.using(using).bulk_create(rows)
    locked = _lock(keys, using)
    _update_figures(locked, figures, using)
    return _admit(locked, using, timezone.now())


def on_status(changed: Iterable[Run], using: str) -> list[Admission]:
    """Status changes of limited runs: a finished run frees its keys (a cooldown
    starts); a rate-limited run whose handler began (recorded: ``running``, or finished
    with ``started_at``) counts as a start at ``started_at``; then the next runs of
    those keys are admitted. Returns the admissions (the caller writes them)."""
    ended: list[int] = []
    began: dict[int, dt.datetime | None] = {}
    for run in changed:
        if run.status in TERMINAL:
            ended.append(run.pk)
            began[run.pk] = run.started_at
        elif run.limited & limits.RATE and run.started_at is not None:
            began[run.pk] = run.started_at  # running, or retrying/pending after it began
    if not began:
        return []
    gone = _delete_rows(ended, [pk for pk in began if pk not in set(ended)], using)
    if not gone:
        return []
    locked = _lock(sorted({key for _, key, _ in gone}), using)
    now = timezone.now()
    touched: dict[str, str] = {}
    for run_id, key, holding in gone:
        state = locked.get(key)
        if state is None or not holding:
            continue
        if key[0] == "w":
            state.finished_at = now
            touched[key] = "finished_at"
        elif key[0] == "r" and began[run_id] is not None:
            starts = sorted([*state.starts, began[run_id].isoformat()],
                            key=dt.datetime.fromisoformat)
            state.starts = starts[-(state.rate or 1):]
            touched[key] = "starts"
    for key, name in touched.items():
        locked[key].save(using=using, update_fields=[name])
    return _admit(locked, using, now)


def _delete_rows(ended: Sequence[int], began: Sequence[int], using: str
                 ) -> list[tuple[int, str, bool]]:
    """Delete the rows of ``ended`` runs and the rate rows of runs that ``began``, in one
    statement; returns them as (run id, key, holding)."""
    conn = connections[using]
    q = conn.ops.quote_name
    table = q(RunLimit._meta.db_table)
    returning = f"RETURNING {q('run_id')}, {q('key')}, {q('holding')}"
    if conn.vendor == "postgresql":
        # One seek per run (OFFSET 0 keeps the planner from turning them into a scan of
        # the table: it rarely knows how many rows it holds), then by primary key.
        sql = (f"DELETE FROM {table} WHERE {q('id')} = ANY(ARRAY(SELECT l.id FROM "
               "unnest(%s::bigint[], %s::bool[]) AS a(run_id, rate_only) CROSS JOIN LATERAL "
               f"(SELECT {q('id')} FROM {table} WHERE {q('run_id')} = a.run_id AND "
               f"(NOT a.rate_only OR {q('key')} LIKE 'r:%%') OFFSET 0) AS l)) {returning}")
        params: list[Any] = [[*ended, *began], [False] * len(ended) + [True] * len(began)]
    else:
        where, params = [], []
        if ended:
            where.append(f"{q('run_id')} IN ({', '.join(['%s'] * len(ended))})")
            params += ended
        if began:
            where.append(f"({q('run_id')} IN ({', '.join(['%s'] * len(began))}) "
                         f"AND {q('key')} LIKE 'r:%%')")
            params += began
        sql = f"DELETE FROM {table} WHERE {' OR '.join(where)} {returning}"
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return [(run_id, key, bool(holding)) for run_id, key, holding in cursor.fetchall()]


def sweep(using: str, limit: int = SWEEP_KEYS) -> list[Admission]:
    """Admit runs of keys with waiting runs that are due, where nothing else is admitting
    right now (keys locked elsewhere are skipped): the safety net behind admission by the
    transactions that free slots. Call inside a transaction."""
    now = timezone.now()
    keys = sorted(set(RunLimit.objects.using(using).filter(holding=False, due__lte=now)
                      .values_list("key", flat=True)[:limit]))
    if not keys:
        return []
    return _admit(_lock(keys, using, skip_locked=True), using, now)


def has_waiting(using: str) -> bool:
    """Are any limited runs waiting (a cheap read before a sweep's transaction)?"""
    return RunLimit.objects.using(using).filter(holding=False, due__lte=timezone.now()).exists()


def _lock(keys: Sequence[str], using: str, skip_locked: bool = False) -> dict[str, LimitKey]:
    """The keys' rows, locked in ``keys`` order (sorted) until the transaction ends (SQLite: the
    transaction holds the write lock already). Raw SQL: a settle locks a key per run it
    ends, and the ORM took longer to build this read than the database to answer it."""
    conn = connections[using]
    q = conn.ops.quote_name
    shape = raw.shape(LimitKey, using)
    lock = ""
    if conn.features.has_select_for_update:
        lock = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
    table = q(LimitKey._meta.db_table)
    if conn.vendor == "postgresql":
        # One seek per key, locked in the order given (sorted): a lateral subquery that
        # locks is not flattened, so the planner cannot pick a scan instead.
        sql = (f"SELECT l.* FROM unnest(%s::text[]) AS k(key) CROSS JOIN LATERAL "
               f"(SELECT {shape.columns} FROM {table} WHERE {q('key')} = k.key{lock}) AS l")
        params: list[Any] = [list(keys)]
    else:  # the keys as one JSON parameter: the same text, prepared once
        sql = (f"SELECT {shape.columns} FROM {table} WHERE {q('key')} IN "
               f"(SELECT value FROM json_each(%s)){lock}")
        params = [raw.json_param(list(keys))]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return {row.key: row for row in raw.instances(LimitKey, cursor.fetchall(), using)}


def _update_figures(locked: dict[str, LimitKey], figures: dict[str, limits.Need],
                    using: str) -> None:
    """A declaration changed (a new cap): the key follows the latest start's figures."""
    for key, state in locked.items():
        need = figures[key]
        if (state.cap, state.rate, state.window) != (need.cap, need.rate, need.window):
            state.cap, state.rate, state.window = need.cap, need.rate, need.window
            state.save(using=using, update_fields=["cap", "rate", "window"])


def _gate(state: LimitKey) -> dt.datetime | None:
    need = limits.Need(state.key, state.cap, state.rate, state.window)
    starts = [dt.datetime.fromisoformat(when) for when in state.starts]
    return limits.gate(need, starts, state.finished_at)


@dataclass
class _Candidate:
    key: str  # the key it was found waiting for
    run_id: int
    due: dt.datetime
    needs: int  # keys the run needs (1: no other key to look at)


def _admit(locked: dict[str, LimitKey], using: str, now: dt.datetime) -> list[Admission]:
    """Admit waiting runs of the ``locked`` keys while every key a run needs has room,
    in priority then FIFO order per key; returns the admissions. The caller writes them
    to the runs it can lock without waiting (``SKIP LOCKED``: a run another transaction
    holds is left to it, which admits again for its keys) and calls :func:`hold`."""
    if not locked:
        return []
    free, candidates = _candidates(locked, using, now)
    crowded = _crowded(locked, candidates)
    if crowded:  # read further where runs needing other keys may be held back
        _, further = _candidates(crowded, using, now, extra=EXTRA_CANDIDATES)
        candidates = sorted([c for c in candidates if c.key not in crowded] + further,
                            key=lambda c: c.key)
    if not candidates:
        return []
    states = dict(locked)
    several = [c.run_id for c in candidates if c.needs > 1]
    needed = _keys_of(several, using) if several else {}
    others = sorted({key for keys in needed.values() for key in keys} - set(states))
    if others:  # keys of the candidates' other limits: never waited for
        extra = _lock(others, using, skip_locked=True)
        more, _ = _candidates(extra, using, now, waiting=False)
        states.update(extra)
        free.update(more)
    admitted: list[Admission] = []
    for candidate in candidates:
        keys = needed.get(candidate.run_id) or [candidate.key]
        if not all(free.get(key, 0) > 0 for key in keys):
            continue
        for key in keys:
            free[key] -= 1
        gates = [(gate, key) for key in keys if (gate := _gate(states[key])) is not None]
        # Its own run_after (due already: claimable by a claim of this transaction, in
        # its place in claim order), or when a window opens or a cooldown ends.
        start_at, reason = candidate.due, ""
        if gates:
            latest, key = max(gates)
            if latest > start_at:
                start_at = latest
                reason = limits.gated_reason(key, latest) if latest > now else ""
        admitted.append(Admission(candidate.run_id, start_at, reason))
    return admitted


def _crowded(states: dict[str, LimitKey], candidates: Sequence[_Candidate]
             ) -> dict[str, LimitKey]:
    """Keys whose read stopped at their cap with a run among them that needs other keys:
    one read for each key's first ``cap`` waiting runs is enough but where such a run is
    held back by another key and a run behind it could start."""
    read: dict[str, int] = {}
    several: set[str] = set()
    for candidate in candidates:
        read[candidate.key] = read.get(candidate.key, 0) + 1
        if candidate.needs > 1:
            several.add(candidate.key)
    return {key: states[key] for key in several if read[key] >= states[key].cap}


def held_sql(conn: Any) -> str:
    """``<table> SET holding = true``: what :func:`hold` does, for a statement of the
    caller's (PostgreSQL writes the admitted runs and their rows in one)."""
    q = conn.ops.quote_name
    return f"{q(RunLimit._meta.db_table)} SET {q('holding')} = {TRUE[conn.vendor]}"


def hold(run_ids: Sequence[int], using: str) -> None:
    """SQLite: the admitted runs (those the caller could write) hold their keys now (the
    ids one JSON parameter: the same statement text, prepared once). PostgreSQL does
    it in the admitting statement (:func:`held_sql`)."""
    if run_ids:
        conn = connections[using]
        with conn.cursor() as cursor:
            cursor.execute(f"UPDATE {held_sql(conn)} WHERE {conn.ops.quote_name('run_id')} IN "
                           "(SELECT value FROM json_each(%s))", [raw.json_param(list(run_ids))])


def _candidates(states: dict[str, LimitKey], using: str, now: dt.datetime,
                waiting: bool = True, extra: int = 0) -> tuple[dict[str, int], list[_Candidate]]:
    """The free slots of each key and (``waiting``) the first ``cap + extra`` waiting due
    runs of each key with room, in priority then FIFO order per key, keys in order: one
    read of per-key index seeks (each key's row with a NULL run id carries its holder
    count; SQLite: one more per further figure of ``cap + extra`` among the keys)."""
    conn = connections[using]
    due_field = RunLimit._meta.get_field("due")
    when = due_field.get_db_prep_value(now, conn)
    converters = conn.ops.get_db_converters(due_field.get_col(RunLimit._meta.db_table))
    keys = sorted(states)
    limits_of = {key: states[key].cap + extra for key in keys}
    reads = (_candidates_postgresql if conn.vendor == "postgresql" else _candidates_sqlite)(
        conn, keys, limits_of if waiting else {}, when)
    free: dict[str, int] = {}
    found: list[tuple[str, int, int, dt.datetime, int]] = []
    with conn.cursor() as cursor:
        for sql, params in reads:
            cursor.execute(sql, params)
            for key, run_id, due, number, priority in cursor.fetchall():
                if run_id is None:
                    free[key] = states[key].cap - number
                    continue
                for convert in converters:
                    due = convert(due, due_field, conn)
                found.append((key, -priority, run_id, due, number))
    found.sort(key=lambda row: row[:3])
    taken: dict[str, int] = {}
    candidates: list[_Candidate] = []
    for key, _, run_id, due, needs in found:
        if free.get(key, 0) > 0 and taken.get(key, 0) < limits_of[key]:
            taken[key] = taken.get(key, 0) + 1
            candidates.append(_Candidate(key, run_id, due, needs))
    return free, candidates


def _held_sql(conn: Any, key: str) -> str:
    q = conn.ops.quote_name
    return (f"SELECT COUNT(*) FROM {q(RunLimit._meta.db_table)}{_index(conn, HOLDING)} "
            f"WHERE {q('key')} = {key} AND {_holding_is(conn, True)}")


def _waiting_sql(conn: Any, key: str, columns: str, limit: str) -> str:
    q = conn.ops.quote_name
    return (f"SELECT {columns} FROM {q(RunLimit._meta.db_table)}{_index(conn, WAITING)} "
            f"WHERE {q('key')} = {key} AND {_holding_is(conn, False)} AND {q('due')} <= %s "
            f"ORDER BY {q('priority')} DESC, {q('run_id')} LIMIT {limit}")


def _candidates_postgresql(conn: Any, keys: list[str], limits_of: dict[str, int],
                           when: Any) -> list[tuple[str, list[Any]]]:
    """One statement, one plan for any number of keys: arrays, lateral seeks."""
    q = conn.ops.quote_name
    sql = (f"SELECT k.key, NULL::bigint, NULL::timestamptz, ({_held_sql(conn, 'k.key')}), "
           "NULL::int FROM unnest(%s::text[]) AS k(key)")
    params: list[Any] = [keys]
    if limits_of:
        columns = f"{q('key')}, {q('run_id')}, {q('due')}, {q('needs')}, {q('priority')}"
        sql += (" UNION ALL SELECT w.* FROM unnest(%s::text[], %s::int[]) AS k(key, n) "
                f"CROSS JOIN LATERAL ({_waiting_sql(conn, 'k.key', columns, 'k.n')}) AS w")
        params += [keys, [limits_of[key] for key in keys], when]
    return [(sql, params)]


def _candidates_sqlite(conn: Any, keys: list[str], limits_of: dict[str, int],
                       when: Any) -> list[tuple[str, list[Any]]]:
    """The same text whatever the keys (the keys a JSON parameter: SQLite's statement
    cache keeps it prepared), and one read per figure of the limit among the keys: a
    LIMIT cannot name the outer row in SQLite. Its IN list returns the rows by id:
    the caller puts them in order."""
    q = conn.ops.quote_name
    table = q(RunLimit._meta.db_table)
    reads: list[tuple[str, list[Any]]] = []
    held = (f"SELECT k.value, NULL, NULL, ({_held_sql(conn, 'k.value')}), NULL "
            "FROM json_each(%s) AS k")
    by_limit: dict[int, list[str]] = {}
    for key in keys:
        by_limit.setdefault(limits_of.get(key, 0), []).append(key)
    for limit, group in sorted(by_limit.items()):
        # The holder counts travel with the first read.
        parts, params = ([held], [raw.json_param(keys)]) if not reads else ([], [])
        if limit:
            parts.append(f"SELECT r.{q('key')}, r.{q('run_id')}, r.{q('due')}, r.{q('needs')}, "
                         f"r.{q('priority')} FROM json_each(%s) AS k JOIN {table} AS r "
                         f"ON r.{q('id')} IN ({_waiting_sql(conn, 'k.value', q('id'), '%s')})")
            params += [raw.json_param(group), when, limit]
        if parts:
            reads.append((" UNION ALL ".join(parts), params))
    return reads


def _holding_is(conn: Any, value: bool) -> str:
    """``holding`` is ``value``, in a form the partial indexes on it serve. SQLite uses a
    partial index only when the query repeats its condition, and Django writes that
    condition as ``"holding" = 1`` (6.x) or a bare ``"holding"`` (5.2): both are written."""
    column = conn.ops.quote_name("holding")
    literal = (TRUE if value else FALSE)[conn.vendor]
    if conn.vendor != "sqlite":
        return f"{column} = {literal}"
    return f"{column} = {literal} AND {'' if value else 'NOT '}{column}"


def _index(conn: Any, name: str) -> str:
    """SQLite has no statistics unless someone runs ANALYZE: name the index to seek."""
    return f" INDEXED BY {conn.ops.quote_name(name)}" if conn.vendor == "sqlite" else ""


def _keys_of(run_ids: Sequence[int], using: str) -> dict[int, list[str]]:
    keys: dict[int, list[str]] = {}
    for run_id, key in (RunLimit.objects.using(using).filter(run_id__in=list(run_ids))
                        .values_list("run_id", "key")):
        keys.setdefault(run_id, []).append(key)
    return keys


def notify(admitted: Iterable[Run], using: str, channel: str) -> None:
    """PostgreSQL: wake idle workers at commit for runs admitted to start now (the
    insert trigger does it for new runs only)."""
    conn = connections[using]
    queues = sorted({run.queue for run in admitted if not run.progress_message})
    if conn.vendor != "postgresql" or not queues:
        return
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, q) FROM unnest(%s::text[]) AS q", [channel, queues])
