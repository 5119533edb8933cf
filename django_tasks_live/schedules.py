"""Cron schedules: each fire time of a ``Schedule`` yields exactly one run.

Every worker calls :func:`tick` about once a second. Any number of workers may tick the
same schedule at once: the run of a fire time is inserted under the database constraint
``tl_run_one_per_fire_time`` (one run per schedule and fire time), so duplicates are
refused by the database, not by a lock held in one process.

Missed fire times (no worker ticked while they passed) follow ``SCHEDULE_MISSED``:

- ``"latest"`` (default): one catch-up run for the most recent missed fire time;
  older missed times are dropped.
- ``"skip"``: no catch-up; a fire time more than ``SCHEDULE_MISFIRE_GRACE`` seconds
  old when a worker first sees it is skipped.

Either way a schedule gets at most one run per tick and ``next_run_at`` moves past now.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import zoneinfo
from collections.abc import Mapping
from typing import Any

from croniter import croniter
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.utils import timezone

from . import conf, store
from .cron import cron_problem
from .models import Run, Schedule
from .registry import UnknownTask, registry

logger = logging.getLogger(__name__)

MISSED_POLICIES = ("latest", "skip")

# pid of the process that synced code schedules (a forked child syncs again).
_synced_pid: int | None = None
# Schedules already warned about in this process, so a missing task does not log every tick.
_warned: set[tuple[int, str]] = set()


class ScheduleError(ValueError):
    """A schedule row that cannot be evaluated (bad cron or time zone stored in it)."""


# ---------------------------------------------------------------- fire times


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ScheduleError(f"{name!r} is not a known time zone.") from exc


def _iter(cron: str, tz: str, start: dt.datetime) -> croniter:
    problem = cron_problem(cron)  # rows written around validation: six fields, say
    if problem is not None:
        raise ScheduleError(problem)
    return croniter(cron, start.astimezone(_zone(tz)))


def next_fire_time(cron: str, tz: str = "UTC", after: dt.datetime | None = None) -> dt.datetime:
    """The first fire time strictly after ``after`` (default now), as an aware UTC datetime."""
    it = _iter(cron, tz, after or timezone.now())
    try:
        fire = it.get_next(dt.datetime)
    except (ValueError, KeyError) as exc:  # CroniterBadDateError: e.g. "0 0 31 2 *"
        raise ScheduleError(f"{cron!r} never fires.") from exc
    return fire.astimezone(dt.UTC)


def latest_fire_time(cron: str, tz: str, at: dt.datetime) -> dt.datetime | None:
    """The most recent fire time at or before ``at`` (None if there is none)."""
    # croniter's get_prev is strictly before its start; a microsecond later includes ``at``.
    it = _iter(cron, tz, at + dt.timedelta(microseconds=1))
    try:
        fire = it.get_prev(dt.datetime)
    except (ValueError, KeyError):
        return None
    return fire.astimezone(dt.UTC)


def fire_time_to_run(
    schedule: Schedule, now: dt.datetime, policy: str, grace: float
) -> dt.datetime | None:
    """Which fire time of a due ``schedule`` gets a run at ``now`` (None: none does)."""
    if schedule.next_run_at is None:
        return None  # never evaluated yet: start counting from now
    latest = latest_fire_time(schedule.cron, schedule.timezone, now)
    if latest is None or latest < schedule.next_run_at:
        return None
    if policy == "skip" and (now - latest).total_seconds() > grace:
        return None
    return latest


# ---------------------------------------------------------------- the tick


def tick(now: dt.datetime | None = None) -> list[Run]:
    """Create the runs of every due schedule and advance them; returns the runs created.

    Safe to call from any number of workers at once. Never raises for a bad schedule
    (it is logged and skipped); database errors propagate so the worker can back off.
    """
    now = now or timezone.now()
    if timezone.is_naive(now):
        raise ValueError(f"tick(now=...) needs an aware datetime, got {now!r}.")
    _sync_code_schedules_once()
    policy = conf.get("SCHEDULE_MISSED")
    if policy not in MISSED_POLICIES:
        raise ValueError(f"TASKS_LIVE['SCHEDULE_MISSED'] must be one of {MISSED_POLICIES}, got {policy!r}.")
    grace = float(conf.get("SCHEDULE_MISFIRE_GRACE"))
    created: list[Run] = []
    for schedule in store.due_schedules(now):
        try:
            run = _tick_one(schedule, now, policy, grace)
        except DatabaseError:
            raise
        except Exception:  # one broken schedule must not stop the others or the worker
            logger.exception("tasks_live: schedule %r failed to tick", schedule.name)
            continue
        if run is not None:
            created.append(run)
    return created


def _tick_one(schedule: Schedule, now: dt.datetime, policy: str, grace: float) -> Run | None:
    try:
        spec = registry.get(schedule.task_name)
    except UnknownTask as exc:
        # Maybe another worker runs newer code that has the task: leave the schedule due.
        _warn_once(schedule, "unknown-task", "tasks_live: schedule %r skipped: %s", schedule.name, exc)
        return None
    try:
        following = next_fire_time(schedule.cron, schedule.timezone, now)
        fire_time = fire_time_to_run(schedule, now, policy, grace)
    except ScheduleError as exc:
        _warn_once(schedule, "bad-cron", "tasks_live: schedule %r skipped: %s", schedule.name, exc)
        return None
    run = None
    if fire_time is not None:
        run = _start(schedule, spec, fire_time)
    store.advance_schedule(schedule.pk, schedule.next_run_at, following, fire_time)
    return run


def _new_run(schedule: Schedule, spec: Any, owner: Any = None) -> store.NewRun:
    """The run a fire of ``schedule`` starts: its queue, kwargs and ``schedule`` label."""
    from .api import using

    new = using(queue=schedule.queue, labels={"schedule": schedule.name[:100]},
                owner=owner).new_run(spec, (), schedule.kwargs or {})
    new.schedule_id = schedule.pk
    return new


def _start(schedule: Schedule, spec: Any, fire_time: dt.datetime) -> Run | None:
    try:
        new = _new_run(schedule, spec)
    except (TypeError, ValueError) as exc:
        logger.error("tasks_live: schedule %r fire time %s skipped: %s", schedule.name, fire_time, exc)
        return None
    new.fire_time = fire_time
    return store.create_run_once(new)  # None: another worker created it first


def run_now(schedule: Schedule, owner: Any = None) -> Run:
    """Start a run of ``schedule`` now, outside its cron ("Run now" in the admin).

    The run is linked to the schedule (``run.schedule``, the ``schedule`` label) but has
    no fire time, so the unique fire-time constraint never refuses it and ``next_run_at``
    and ``last_run_at`` stay as they are: the next cron fire happens as planned. Raises
    ``UnknownTask`` when the task is not in code, ``TypeError``/``ValueError`` when the
    stored kwargs no longer fit the handler.
    """
    spec = registry.get(schedule.task_name)
    return store.create_runs([_new_run(schedule, spec, owner)])[0]


def _sync_code_schedules_once() -> None:
    global _synced_pid
    if _synced_pid != os.getpid():
        store.sync_code_schedules(registry)
        _synced_pid = os.getpid()


def _warn_once(schedule: Schedule, what: str, msg: str, *args: Any) -> None:
    key = (schedule.pk, what)
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


# ---------------------------------------------------------------- creating schedules


def argument_errors(task_name: Any, kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Field -> message for what a schedule's task and kwargs cannot be (storable JSON,
    bindable to the handler): shared by :func:`create_schedule` and the admin form."""
    from .jsonvalues import ensure_json

    try:
        ensure_json(dict(kwargs), "kwargs")
        spec = registry.get(task_name) if isinstance(task_name, str) else None
        if spec is not None:
            spec.check_arguments((), kwargs)
    except (TypeError, UnknownTask) as exc:
        return {"task_name" if isinstance(exc, UnknownTask) else "kwargs": str(exc)}
    except RecursionError:
        return {"kwargs": "kwargs are nested too deeply."}
    return {}


def create_schedule(
    name: str,
    task_name: str,
    cron: str,
    timezone: str = "UTC",
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    enabled: bool = True,
) -> Schedule:
    """Validate and save a cron schedule; raises ``ValidationError`` saying what is wrong."""
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise ValidationError({"kwargs": f"kwargs must be a mapping, got {kwargs!r}."})
    errors = argument_errors(task_name, kwargs)
    schedule = Schedule(name=name, task_name=task_name, cron=cron, timezone=timezone,
                        kwargs=dict(kwargs), queue=queue, enabled=enabled)
    try:
        schedule.full_clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, " ".join(messages))
    if errors:
        raise ValidationError(errors)
    schedule.next_run_at = next_fire_time(cron, timezone)
    return store.save_schedule(schedule)
