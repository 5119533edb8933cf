"""The public verbs: start, cancel, rerun, wait (and their async twins)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from . import store
from .jsonvalues import ensure_json
from .models import Run
from .registry import TaskSpec, registry
from .states import CLAIMABLE, TERMINAL, IllegalTransition, Status

MAX_NAME = 100
# (name, kwargs) or (name, args, kwargs)
Call = tuple[str, Mapping[str, Any]] | tuple[str, Sequence[Any], Mapping[str, Any]]


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or "\x00" in value:
        raise ValueError(
            f"{what} must be a non-empty string of at most {MAX_NAME} characters "
            f"(no NUL), got {value!r}."
        )
    return value


def _run_id(run: Run | int | str) -> int:
    if isinstance(run, Run):
        return run.pk
    if isinstance(run, bool) or not isinstance(run, int | str):
        raise TypeError(f"A run id must be an int (or a Run), got {run!r}.")
    try:
        value = int(run)
    except ValueError:
        raise ValueError(f"{run!r} is not a run id.") from None
    if value <= 0:
        raise ValueError(f"{run!r} is not a run id.")
    return value


def _get(run_id: int) -> Run:
    try:
        return store.get_run(run_id)
    except Run.DoesNotExist:
        raise Run.DoesNotExist(f"Run {run_id} does not exist.") from None


def _seconds(value: Any, zero_ok: bool) -> bool:
    """True if ``value`` is a finite number of seconds (> 0, or >= 0 with ``zero_ok``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= 0 if zero_ok else value > 0


@dataclass(frozen=True)
class StartOptions:
    """How a run is started; ``tasks_live.using(queue="high").start("name", ...)``."""

    queue: str | None = None
    priority: int | None = None
    run_after: dt.datetime | None = None
    delay: float | None = None
    timeout: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: Any = None
    unique_key: str | None = None

    def __post_init__(self) -> None:
        if self.queue is not None:
            _check_name(self.queue, "queue")
        if self.priority is not None and (
            not isinstance(self.priority, int) or isinstance(self.priority, bool)
            or not -100 <= self.priority <= 100
        ):
            raise ValueError(f"priority must be an integer from -100 to 100, got {self.priority!r}.")
        if self.run_after is not None:
            if not isinstance(self.run_after, dt.datetime):
                raise TypeError(f"run_after must be a datetime, got {self.run_after!r}.")
            if settings.USE_TZ and timezone.is_naive(self.run_after):
                raise ValueError("run_after must be an aware datetime.")
        if self.delay is not None and not _seconds(self.delay, zero_ok=True):
            raise ValueError(f"delay must be a non-negative number of seconds, got {self.delay!r}.")
        if self.delay is not None and self.run_after is not None:
            raise ValueError("Give run_after or delay, not both.")
        if self.timeout is not None and not _seconds(self.timeout, zero_ok=False):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if not isinstance(self.labels, Mapping):
            raise TypeError(f"labels must be a mapping of str to str, got {self.labels!r}.")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or ":" in key:
                raise ValueError(
                    f"labels must map non-empty strings without ':' to strings, got {key!r}: {value!r}."
                )
        ensure_json(dict(self.labels), "labels")
        if self.unique_key is not None:
            _check_name(self.unique_key, "unique_key")

    def new_run(self, spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> store.NewRun:
        ensure_json(list(args), "args")
        ensure_json(dict(kwargs), "kwargs")
        spec.check_arguments(args, kwargs)
        run_after = self.run_after
        if self.delay:
            run_after = timezone.now() + dt.timedelta(seconds=self.delay)
        return store.NewRun(
            task_name=spec.name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=self.queue or spec.queue,
            priority=spec.priority if self.priority is None else self.priority,
            run_after=run_after,
            timeout=self.timeout,
            max_attempts=spec.max_attempts,
            steps=[{"name": n, "weight": w, "state": "pending"} for n, w in spec.steps],
            labels=dict(self.labels),
            unique_key=self.unique_key,
            owner_id=getattr(self.owner, "pk", self.owner),
        )

    def start(self, name: str, /, *args: Any, **kwargs: Any) -> Run:
        """Start one run of the task ``name`` with these handler arguments."""
        spec = registry.get(_check_name(name, "task name"))
        new = self.new_run(spec, args, kwargs)
        if self.unique_key is None:
            return store.create_runs([new])[0]
        run = store.create_run_once(new)
        if run is None:
            raise ValueError(f"A run with unique_key {self.unique_key!r} is already active.")
        return run

    def start_many(self, calls: Iterable[Call]) -> list[Run]:
        """Start several runs in one transaction: all are created, or none."""
        if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Iterable):
            raise TypeError(f"calls must be an iterable of (name, kwargs) tuples, got {calls!r}.")
        new_runs = []
        for i, call in enumerate(calls):
            if not isinstance(call, tuple) or len(call) not in (2, 3):
                raise TypeError(f"calls[{i}] must be (name, kwargs) or (name, args, kwargs).")
            name, args, kwargs = (call[0], (), call[1]) if len(call) == 2 else call
            if not isinstance(kwargs, Mapping):
                raise TypeError(f"calls[{i}] kwargs must be a mapping, got {kwargs!r}.")
            new_runs.append(self.new_run(registry.get(_check_name(name, "task name")), args, kwargs))
        return store.create_runs(new_runs) if new_runs else []


def using(**options: Any) -> StartOptions:
    """Start options: queue, priority, run_after, delay, timeout, labels, owner, unique_key."""
    known = [f.name for f in fields(StartOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"Unknown start option {', '.join(map(repr, unknown))}; options are {', '.join(known)}."
        )
    return StartOptions(**options)


_DEFAULT = StartOptions()


def start(name: str, /, *args: Any, **kwargs: Any) -> Run:
    """Start the task ``name``; ``args``/``kwargs`` go to its handler. Returns the pending Run."""
    return _DEFAULT.start(name, *args, **kwargs)


def start_many(calls: Iterable[Any]) -> list[Run]:
    return _DEFAULT.start_many(calls)


def cancel(run: Run | int) -> Run:
    """Cancel a run: a waiting run ends at once, a running one is asked to stop."""
    run_id = _run_id(run)
    current = _get(run_id)
    if current.status in CLAIMABLE:
        try:
            return store.transition(run_id, Status.CANCELED, cancel_requested_at=timezone.now())
        except IllegalTransition:
            current = _get(run_id)  # claimed meanwhile: ask it to stop instead
    if current.status == Status.RUNNING:
        return store.transition(run_id, Status.CANCEL_REQUESTED, cancel_requested_at=timezone.now())
    if current.status == Status.CANCEL_REQUESTED:
        return current
    raise IllegalTransition(run_id, current.status, Status.CANCELED)


def rerun(run: Run | int) -> Run:
    """Start a new run with the same task and arguments, linked to the old one."""
    run_id = _run_id(run)
    old = _get(run_id)
    if old.status not in TERMINAL:
        raise ValueError(f"Run {run_id} is {old.status}; only finished runs can be rerun.")
    if old.kind == "django":
        from .backends import rerun_django

        return rerun_django(old)
    spec = registry.get(old.task_name)
    options = replace(_DEFAULT, queue=old.queue, priority=old.priority, timeout=old.timeout,
                      labels=old.labels)
    new = options.new_run(spec, old.args, old.kwargs)
    new.rerun_of_id = old.pk
    new.owner_id = old.owner_id
    return store.create_runs([new])[0]


def _check_wait(timeout: Any, poll: Any) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}.")
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not poll > 0:
        raise ValueError(f"poll must be a positive number of seconds, got {poll!r}.")


def wait(run: Run | int, timeout: float | None = None, poll: float = 0.05) -> Run:
    """Block until the run finishes; returns it. Raises ``TimeoutError`` after ``timeout`` s."""
    _check_wait(timeout, poll)
    run_id = _run_id(run)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = poll
    while True:
        current = _get(run_id)
        if current.status in TERMINAL:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"Run {run_id} is still {current.status} after {timeout}s.")
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)


astart = sync_to_async(start)
acancel = sync_to_async(cancel)
arerun = sync_to_async(rerun)


async def await_run(run: Run | int, timeout: float | None = None, poll: float = 0.05) -> Run:
    """Async twin of :func:`wait`."""
    _check_wait(timeout, poll)
    run_id = _run_id(run)
    deadline = None if timeout is None else time.monotonic() + timeout
    get = sync_to_async(_get)
    delay = poll
    while True:
        current = await get(run_id)
        if current.status in TERMINAL:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"Run {run_id} is still {current.status} after {timeout}s.")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 1.0)


await_ = await_run
