"""Cancel and rerun many runs at once, in bounded batches (the admin's bulk actions).

Each batch is one short transaction (:func:`store.transition_many`, one INSERT for the
reruns), so "cancel all 100,000 matching runs" neither holds one long transaction nor
pays a transaction per run. The outcome says what happened to each run in words:
canceled, asked to stop, already stopping, or left alone because it had finished.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db.models import QuerySet
from django.utils import timezone

from . import store
from .models import Run
from .registry import UnknownTask
from .states import CLAIMABLE, TERMINAL, Status

BATCH_SIZE = 500
# One request handles at most this many runs (or this many seconds): the rest is left
# for the next request, so a huge "all matching" never times out the request.
MAX_RUNS = 20_000
MAX_SECONDS = 10.0


@dataclass
class BulkOutcome:
    """What one bulk action did, per kind of result (run ids, newest first)."""

    done: list[int] = field(default_factory=list)  # canceled at once / reruns started
    requested: list[int] = field(default_factory=list)  # running: asked to stop
    stopping: list[int] = field(default_factory=list)  # already asked to stop
    refused: dict[str, list[int]] = field(default_factory=dict)  # status -> run ids left alone
    errors: dict[int, str] = field(default_factory=dict)  # run id -> why it failed
    new_runs: list[int] = field(default_factory=list)  # the reruns' ids
    remaining: bool = False  # stopped at MAX_RUNS / MAX_SECONDS: more runs match

    @property
    def touched(self) -> int:
        return (len(self.done) + len(self.requested) + len(self.stopping)
                + sum(map(len, self.refused.values())) + len(self.errors))

    def refuse(self, run_id: int, status: str) -> None:
        self.refused.setdefault(status, []).append(run_id)


def id_batches(queryset: QuerySet[Run], size: int = BATCH_SIZE) -> Iterator[list[tuple[int, str]]]:
    """(id, status) of the runs of ``queryset``, newest first, ``size`` at a time.

    Keyset pagination on the primary key: each batch is an index range read however
    many runs match, and runs changed by an earlier batch are not read twice.
    """
    before: int | None = None
    base = queryset.order_by("-id")
    while True:
        page = base if before is None else base.filter(pk__lt=before)
        rows = list(page.values_list("id", "status")[:size])
        if not rows:
            return
        yield rows
        before = rows[-1][0]
        if len(rows) < size:
            return


def _batches(queryset: QuerySet[Run], outcome: BulkOutcome, max_runs: int | None,
             max_seconds: float | None) -> Iterator[list[tuple[int, str]]]:
    max_runs = MAX_RUNS if max_runs is None else max_runs
    deadline = time.monotonic() + (MAX_SECONDS if max_seconds is None else max_seconds)
    seen = 0
    for rows in id_batches(queryset, min(BATCH_SIZE, max_runs)):
        if seen >= max_runs or time.monotonic() > deadline:
            outcome.remaining = True
            return
        rows = rows[: max_runs - seen]
        seen += len(rows)
        yield rows


def cancel_matching(queryset: QuerySet[Run], *, max_runs: int | None = None,
                    max_seconds: float | None = None) -> BulkOutcome:
    """Cancel the runs of ``queryset``: waiting ones end at once, running ones are asked
    to stop (as :func:`api.cancel` does, a batch at a time); finished ones are left."""
    outcome = BulkOutcome()
    for rows in _batches(queryset, outcome, max_runs, max_seconds):
        waiting = [run_id for run_id, status in rows if status in CLAIMABLE]
        canceled = {run.pk for run in store.transition_many(
            waiting, Status.CANCELED, CLAIMABLE, cancel_requested_at=timezone.now())}
        # A waiting run claimed since we read it is held by a worker now: ask it to stop.
        held = {Status.CLAIMED, Status.RUNNING}
        running = [run_id for run_id, status in rows
                   if status in held or (status in CLAIMABLE and run_id not in canceled)]
        for parent_id in store.flow_parents(running):  # a chain or group: with its children
            store.cancel_flow(parent_id)
            canceled.add(parent_id)
        running = [run_id for run_id in running if run_id not in canceled]
        requested = {run.pk for run in store.transition_many(
            running, Status.CANCEL_REQUESTED, held, cancel_requested_at=timezone.now())}
        left = [run_id for run_id, _ in rows if run_id not in canceled and run_id not in requested]
        now = store.statuses(left) if left else {}
        for run_id, _ in rows:
            if run_id in canceled:
                outcome.done.append(run_id)
            elif run_id in requested:
                outcome.requested.append(run_id)
            elif run_id not in now:
                outcome.errors[run_id] = "it no longer exists"
            elif now[run_id] == Status.CANCEL_REQUESTED:
                outcome.stopping.append(run_id)
            else:
                outcome.refuse(run_id, now[run_id])
    return outcome


def rerun_matching(queryset: QuerySet[Run], *, max_runs: int | None = None,
                   max_seconds: float | None = None) -> BulkOutcome:
    """Start a linked rerun of each finished run of ``queryset`` (one INSERT per batch);
    unfinished runs are left alone."""
    from .api import rerun, rerun_alone, rerun_plan

    outcome = BulkOutcome()
    for rows in _batches(queryset, outcome, max_runs, max_seconds):
        finished = [run_id for run_id, status in rows if status in TERMINAL]
        for run_id, status in rows:
            if status not in TERMINAL:
                outcome.refuse(run_id, status)
        new_runs, sources = [], []
        for old in store.runs(run_ids=finished) if finished else []:
            try:
                if rerun_alone(old):  # its own path (signals, flows, unique keys): one at a time
                    outcome.new_runs.append(rerun(old).pk)
                    outcome.done.append(old.pk)
                    continue
                new_runs.append(rerun_plan(old))
            except (TypeError, ValueError, UnknownTask, LookupError) as exc:
                outcome.errors[old.pk] = str(exc)
                continue
            sources.append(old.pk)
        if new_runs:
            outcome.new_runs.extend(run.pk for run in store.create_runs(new_runs))
            outcome.done.extend(sources)
    return outcome
