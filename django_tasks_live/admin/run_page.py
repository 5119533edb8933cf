"""One run's compact page: what it is doing, what it was given, each attempt, where it
came from, what happened when.

Everything here is read from the run row and its newest events (bounded), never from a
scan: reruns of a run are read through the ``rerun_of`` foreign key index.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from .. import admission, flows, store
from ..models import Run, RunEvent
from ..states import TERMINAL, Status
from .forms import pretty_json

EVENTS_SHOWN = 50
ERROR_STATUSES = {Status.RETRYING, Status.FAILED, Status.TIMED_OUT}
STEP_STATES = {"done": "completed"}  # the context's word for a finished step
RERUNS_SHOWN = 20
CHILDREN_SHOWN = 200


def seconds(value: float | None) -> str:
    """"0.42 s", "12.3 s", "4 min 5 s", "2 h 3 min"."""
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def duration(run: Run, now: dt.datetime | None = None) -> float | None:
    """Seconds the run has run (so far, while active)."""
    end = run.finished_at if run.status in TERMINAL else (now or timezone.now())
    return between(run.started_at, end)


def outcome_text(run: Run) -> str:
    """The line under a run's bar: its progress message while it runs; once finished the
    outcome instead (a completed import at 100% no longer says "Saving")."""
    if run.status in (Status.FAILED, Status.TIMED_OUT):
        text = f"{run.error_type.rsplit('.', 1)[-1]}: {run.error}" if run.error_type else run.error
        return text[:200]
    if run.status in TERMINAL:
        return ""
    return run.progress_message


@dataclass
class Attempt:
    number: int
    status: str  # "failed", "running", "completed", ...
    worker: str
    error_type: str
    message: str
    traceback: str
    at: str


def attempts(run: Run) -> list[Attempt]:
    """One row per attempt: each failed attempt's recorded error, then the current one
    (whose outcome is the run's status; a completed run shows no earlier error as its own)."""
    rows = []
    for entry in run.errors or []:
        if not isinstance(entry, dict):
            continue
        rows.append(Attempt(int(entry.get("attempt") or len(rows) + 1), "failed",
                            str(entry.get("worker") or ""), str(entry.get("type") or ""),
                            str(entry.get("message") or ""), str(entry.get("traceback") or ""),
                            str(entry.get("at") or "")))
    recorded = {row.number for row in rows}
    if run.attempt and run.attempt not in recorded:
        failed = run.status in (Status.FAILED, Status.TIMED_OUT)
        rows.append(Attempt(run.attempt, str(run.status), run.worker_id,
                            run.error_type if failed else "", run.error if failed else "",
                            run.traceback if failed else "", ""))
    return rows


def stepper(run: Run) -> list[dict[str, str]]:
    """The run's steps with a state each: pending, running, completed, failed, skipped."""
    steps = []
    for step in run.steps or []:
        if not isinstance(step, dict):
            continue
        state = str(step.get("state") or "pending")
        state = STEP_STATES.get(state, state)
        if run.status in TERMINAL and state in ("pending", "running"):
            # A finished run's unreached steps were skipped; its running step failed.
            state = "completed" if run.status == Status.COMPLETED else (
                "failed" if state == "running" else "skipped")
        steps.append({"name": str(step.get("name") or ""), "state": state})
    return steps


@dataclass
class TimelineEntry:
    event: RunEvent
    folded: int  # progress events folded into this line
    text: str


def timeline(run_id: int, limit: int = EVENTS_SHOWN) -> list[TimelineEntry]:
    """Newest events first; consecutive progress events fold into one line (the newest)."""
    entries: list[TimelineEntry] = []
    for event in store.run_events(run_id, limit):
        if event.kind == "progress" and entries and entries[-1].event.kind == "progress":
            entries[-1].folded += 1
            continue
        entries.append(TimelineEntry(event, 0, _event_text(event)))
    return entries


def _event_text(event: RunEvent) -> str:
    data = event.data if isinstance(event.data, dict) else {}
    progress = data.get("progress") or {}
    parts = []
    if progress.get("message"):
        parts.append(str(progress["message"]))
    if progress.get("percent") is not None:
        parts.append(f"{progress['percent']:.0f}%")
    # A status event carries the run's last error; only failing moves are about it.
    if event.status in ERROR_STATUSES and data.get("error"):
        parts.append(str(data["error"]))
    return " · ".join(parts)


def context(run: Run) -> dict[str, Any]:
    now = timezone.now()
    reruns = list(Run.objects.filter(rerun_of=run.pk).order_by("-id")
                  .values_list("id", "status")[:RERUNS_SHOWN])
    return {
        "run": run,
        "is_active": run.status not in TERMINAL,
        "outcome_text": outcome_text(run),
        "is_finished": run.status in TERMINAL,
        "steps": stepper(run),
        "attempts": attempts(run),
        "timeline": timeline(run.pk),
        "events_shown": EVENTS_SHOWN,
        "reruns": reruns,
        # A chain's or group's children, in order (read through the parent index).
        "children": list(Run.objects.filter(parent=run.pk).order_by("position").values_list(
            "id", "position", "task_name", "status", "percent")[:CHILDREN_SHOWN])
        if run.kind in flows.KINDS else [],
        "args_json": pretty_json(run.args),
        "kwargs_json": pretty_json(run.kwargs),
        "result_json": pretty_json(run.result) if run.status == Status.COMPLETED else "",
        "labels": sorted((run.labels or {}).items()),
        "earlier_workers": [w for w in dict.fromkeys(run.worker_ids or []) if w and w != run.worker_id],
        "timings": [
            ("Created", run.created_at, ""),
            ("May start", run.run_after, seconds(between(run.created_at, run.run_after))
             if run.run_after and run.run_after > run.created_at else "")
            if not admission.is_waiting(run) else ("May start", None, ""),  # see the note
            ("Started", run.started_at, seconds(between(run.created_at, run.started_at))
             and "waited " + seconds(between(run.created_at, run.started_at))),
            ("Finished", run.finished_at if run.status in TERMINAL else None,
             seconds(duration(run, now)) and ("ran " if run.status in TERMINAL else "running for ")
             + seconds(duration(run, now))),
            ("Cancel requested", run.cancel_requested_at, ""),
        ],
        "duration": seconds(duration(run, now)),
    }
