"""Paused tasks and queues: no worker claims their runs until they are resumed.

A pause is a ``Pause`` row (task or queue, by name), so it survives restarts and holds
for every worker: the built-in ``tasks_worker``, the embedded worker and django-q2.
Runs of a paused task or queue stay pending; :meth:`PauseSet.reason` says why.

Claims are the hot path, so workers never read this table per claim: each keeps the
set in memory and hands it to the claim (:func:`claim_shape`). With nothing paused the
claim is exactly the unpaused one (same SQL, same parameters); with something paused
the claim skips those tasks (``task_name NOT IN``) and queues (dropped from the
worker's queue list, or ``queue NOT IN`` for a worker of every queue).

How workers learn of a change: a ``tasks_worker`` supervisor re-reads the set every
``PAUSE_REFRESH_INTERVAL`` seconds and at once on PostgreSQL's NOTIFY (sent by
:func:`pause` and :func:`resume`), passes it to its executors and, on a resume, wakes
the idle ones; the embedded worker and django-q2 processes read it through
:func:`current`, a per-process copy at most that old.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, router, transaction

from . import conf
from .models import Pause
from .queues import check_queue
from .states import CLAIMABLE

# Supervisors LISTEN on it too: a pause or resume reaches them without waiting a refresh.
PAUSE_CHANNEL = "tasks_live_pause"


@dataclass(frozen=True)
class PauseSet:
    """The paused task and queue names (empty: nothing paused, the claim as always)."""

    tasks: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.tasks or self.queues)

    def reason(self, task_name: str, queue: str) -> str:
        """Why a waiting run of ``task_name`` on ``queue`` is not claimed ("" if it may be)."""
        if task_name in self.tasks:
            return f"task {task_name} is paused"
        if queue in self.queues:
            return f"queue {queue} is paused"
        return ""

    def run_reason(self, run: Any) -> str:
        """:meth:`reason` for a run that is waiting to be claimed; "" for any other run."""
        if run.status not in CLAIMABLE:
            return ""
        return self.reason(run.task_name, run.queue)

    def describe(self) -> str:
        """"task a, queue b" (workers log it on each change); "nothing"."""
        names = [f"task {name}" for name in sorted(self.tasks)]
        names += [f"queue {name}" for name in sorted(self.queues)]
        return ", ".join(names) or "nothing"

    def resumed_since(self, older: PauseSet) -> bool:
        """Did anything paused in ``older`` stop being paused here?"""
        return bool(older.tasks - self.tasks or older.queues - self.queues)


NOTHING = PauseSet()


def _db() -> str:
    return router.db_for_write(Pause)


def read(using: str | None = None) -> PauseSet:
    """The pause set as the database has it now (one read of a tiny table)."""
    rows = Pause.objects.using(using or _db()).values_list("kind", "name")
    tasks, queues = set(), set()
    for kind, name in rows:
        (tasks if kind == Pause.TASK else queues).add(name)
    return PauseSet(frozenset(tasks), frozenset(queues))


_cache_lock = threading.Lock()
_cached: tuple[float, PauseSet] | None = None


def current() -> PauseSet:
    """This process's copy of the pause set, re-read once it is older than
    ``PAUSE_REFRESH_INTERVAL`` (for the embedded worker, django-q2 and the admin)."""
    global _cached
    now = time.monotonic()
    cached = _cached
    if cached is not None and now - cached[0] < conf.get("PAUSE_REFRESH_INTERVAL"):
        return cached[1]
    paused = read()
    with _cache_lock:
        _cached = (now, paused)
    return paused


def forget() -> None:
    """Drop this process's copy (after a change here, and in tests)."""
    global _cached
    with _cache_lock:
        _cached = None


def _targets(task: str | None, queue: str | None) -> list[tuple[str, str]]:
    targets = []
    if task is not None:
        if not isinstance(task, str) or not task or len(task) > 200:
            raise ValueError(f"task must be a task name (1-200 characters), got {task!r}.")
        targets.append((Pause.TASK, task))
    if queue is not None:
        targets.append((Pause.QUEUE, check_queue(queue)))
    if not targets:
        raise ValueError("Name a task or a queue (task=... or queue=...).")
    return targets


def pause(*, task: str | None = None, queue: str | None = None, reason: str = "",
          by: str = "") -> list[Pause]:
    """Pause ``task`` and/or ``queue`` (already paused: kept as it was); returns the rows."""
    using = _db()
    rows = []
    with transaction.atomic(using=using):
        for kind, name in _targets(task, queue):
            row, _ = Pause.objects.using(using).get_or_create(
                kind=kind, name=name, defaults={"reason": str(reason)[:200], "paused_by": by[:150]})
            rows.append(row)
        _announce(using)
    return rows


def resume(*, task: str | None = None, queue: str | None = None) -> int:
    """Resume ``task`` and/or ``queue``; returns how many were paused. Workers claim
    their waiting runs at once (a supervisor wakes its idle executors on a resume)."""
    using = _db()
    with transaction.atomic(using=using):
        removed = 0
        for kind, name in _targets(task, queue):
            removed += Pause.objects.using(using).filter(kind=kind, name=name).delete()[0]
        _announce(using)
    return removed


def rows() -> list[Pause]:
    """Every pause, tasks first (for pages and the command's listing)."""
    return list(Pause.objects.using(_db()).all())


def _announce(using: str) -> None:
    """After commit: this process forgets its copy, and on PostgreSQL every listening
    worker is told to re-read the set."""
    transaction.on_commit(forget, using=using)
    conn = connections[using]
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:  # delivered at commit, like the new-run trigger's
            cursor.execute("SELECT pg_notify(%s, '')", [PAUSE_CHANNEL])


# ---------------------------------------------------------------- composing the claim


@dataclass(frozen=True)
class ClaimShape:
    """A claim under a pause set: the queues to claim from (empty: any), and the task
    and queue names it must skip."""

    queues: list[str]
    skip_tasks: list[str]
    skip_queues: list[str]


def claim_shape(paused: PauseSet, queues: Sequence[str] | None) -> ClaimShape | None:
    """How a worker of ``queues`` (None: every queue) claims under ``paused``; None when
    every queue it serves is paused (nothing to claim)."""
    tasks = sorted(paused.tasks)
    if queues:
        kept = [name for name in queues if name not in paused.queues]
        return ClaimShape(kept, tasks, []) if kept else None
    return ClaimShape([], tasks, sorted(paused.queues))


def exclusion_sql(quote: Any, skip_tasks: int, skip_queues: int) -> str:
    """The claim's extra WHERE terms for ``skip_tasks`` task and ``skip_queues`` queue
    parameters (in that order); "" for none."""
    sql = ""
    if skip_tasks:
        sql += f" AND {quote('task_name')} NOT IN ({', '.join(['%s'] * skip_tasks)})"
    if skip_queues:
        sql += f" AND {quote('queue')} NOT IN ({', '.join(['%s'] * skip_queues)})"
    return sql
