"""What a running handler sees: ``ctx.progress()``, ``ctx.step()``, cancel and timeout checks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, close_old_connections

from . import conf, events, store
from .jsonvalues import storable_text
from .states import ACTIVE, Status

logger = logging.getLogger(__name__)


def _message_text(message: Any) -> str:
    """A progress message as stored: text, storable (no NUL), at most 2,000 characters."""
    return storable_text(str(message))[:2000]


class Canceled(Exception):
    """Raised by ``ctx.check()`` when a cancel was requested for the run."""


class TaskTimeout(Exception):
    """Raised by ``ctx.check()`` when the run's time limit has passed."""


@dataclass(frozen=True)
class RunInfo:
    """The facts about the current run a handler may read."""

    id: int
    task: str
    attempt: int
    max_attempts: int
    labels: dict[str, str] = field(default_factory=dict)


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "tasks_live_context", default=None
)
_db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tasks-live-ctx")


def current_context() -> TaskContext:
    """The context of the run executing in this thread or task (for ``django.tasks`` code)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("No django-tasks-live run is executing here.")
    return ctx


def db_call[T](fn: Callable[[], T]) -> T:
    """Run a database call; from inside an event loop, run it off the loop's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    return _db_thread.submit(fn).result()


async def _off_loop[T](fn: Callable[[], T]) -> T:
    """Await a blocking database call made on the shared database thread."""
    return await asyncio.wrap_future(_db_thread.submit(fn))


class TaskContext:
    """Handed to every handler as its first argument."""

    def __init__(
        self,
        run_id: int,
        *,
        task: str,
        attempt: int,
        max_attempts: int = 1,
        labels: dict[str, str] | None = None,
        steps: list[dict[str, Any]] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.run = RunInfo(run_id, task, attempt, max_attempts, dict(labels or {}))
        self.deadline = deadline  # time.monotonic() value, or None
        self._steps = [dict(step) for step in (steps or [])]
        self._fields: dict[str, Any] = {}
        self._dirty = False
        self._last_persist = 0.0
        self._last_push = 0.0
        self._last_status_read = time.monotonic()
        self._status: str = Status.RUNNING

    # -- progress ---------------------------------------------------------------

    def progress(
        self, message: str | None = None, current: float | None = None, total: float | None = None
    ) -> None:
        """Report progress. Persisted at most every ``PROGRESS_PERSIST_INTERVAL`` s,
        pushed at most every ``PROGRESS_PUSH_INTERVAL`` s; the last value always lands."""
        for name, value in (("current", current), ("total", total)):
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise TypeError(f"progress {name} must be a number, got {value!r}.")
            if value is not None and not math.isfinite(value):  # JSON (and PostgreSQL) refuse it
                raise ValueError(f"progress {name} must be a finite number, got {value!r}.")
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0, got {total!r}.")
        if message is not None:
            self._fields["progress_message"] = _message_text(message)
        if current is not None:
            self._fields["progress_current"] = float(current)
        if total is not None:
            self._fields["progress_total"] = float(total)
        self._fields["percent"] = self._percent()
        self._dirty = True
        self._maybe_write()

    def step(self, name: str, message: str | None = None) -> None:
        """Enter the declared step ``name``; earlier running steps are marked done."""
        names = [s["name"] for s in self._steps]
        if name not in names:
            raise ValueError(
                f"Unknown step {name!r} for task {self.run.task!r}; declared: {names or 'none'}."
            )
        for step in self._steps:
            if step["state"] == "running":
                step["state"] = "done"
            if step["name"] == name:
                step["state"] = "running"
        self._fields.update(progress_current=None, progress_total=None, steps=self._steps)
        if message is not None:
            self._fields["progress_message"] = _message_text(message)
        self._fields["percent"] = self._percent()
        self._dirty = True
        self._maybe_write(force=True)

    def _percent(self) -> float | None:
        current = self._fields.get("progress_current")
        total = self._fields.get("progress_total")
        fraction = None
        if current is not None and total:
            fraction = max(0.0, min(1.0, current / total))
        if not self._steps:
            return None if fraction is None else round(fraction * 100, 2)
        weight_total = sum(s["weight"] for s in self._steps)
        done = sum(s["weight"] for s in self._steps if s["state"] == "done")
        running = sum(s["weight"] for s in self._steps if s["state"] == "running")
        return round(100 * (done + running * (fraction or 0.0)) / weight_total, 2)

    def final_fields(self, success: bool) -> dict[str, Any]:
        """The progress fields to write with the runner's terminal transition."""
        if success and self._steps:
            for step in self._steps:
                step["state"] = "done"
            self._fields["steps"] = self._steps
            self._fields["percent"] = 100.0
        elif not success:
            for step in self._steps:
                if step["state"] == "running":
                    step["state"] = "failed"
            if self._steps:
                self._fields["steps"] = self._steps
        # Everything reported, persisted or not: the worker builds the final event's
        # state from the claimed row plus these fields.
        return dict(self._fields)

    def _maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_persist >= conf.get("PROGRESS_PERSIST_INTERVAL"):
            self._persist(now)
        elif now - self._last_push >= conf.get("PROGRESS_PUSH_INTERVAL"):
            self._last_push = now
            events.push_now([events.message(None, "progress", self._preview())])

    def _persist(self, now: float) -> None:
        fields = dict(self._fields)
        try:
            status = db_call(lambda: store.save_progress(self.run.id, **fields))
        except DatabaseError:  # an outage must not fail the handler; the next write retries
            logger.warning("Run %s: progress not saved (database unavailable)", self.run.id)
            db_call(close_old_connections)
            return
        self._last_persist = self._last_push = now
        self._dirty = False
        self._note_status(status)

    def _preview(self) -> dict[str, Any]:
        """A push-only progress message: enough for clients to move a bar."""
        return {
            "id": self.run.id,
            "task": self.run.task,
            "status": self._status,
            "attempt": self.run.attempt,
            "progress": {
                "current": self._fields.get("progress_current"),
                "total": self._fields.get("progress_total"),
                "percent": self._fields.get("percent"),
                "message": self._fields.get("progress_message", ""),
            },
            "steps": self._steps,
        }

    # -- cancel and timeout -----------------------------------------------------

    def _note_status(self, status: str | None) -> None:
        self._last_status_read = time.monotonic()
        if status is not None:
            self._status = status

    def is_canceled(self) -> bool:
        """True once a cancel was requested (re-read from the database now and then)."""
        if self._status not in ACTIVE:
            return True
        if self._status == Status.CANCEL_REQUESTED:
            return True
        if time.monotonic() - self._last_status_read >= conf.get("CANCEL_CHECK_INTERVAL"):
            try:
                status = db_call(lambda: store.statuses([self.run.id]).get(self.run.id))
            except DatabaseError:
                db_call(close_old_connections)
                self._last_status_read = time.monotonic()
                return False
            self._note_status(status or Status.CANCELED)
        return self._status != Status.RUNNING

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise :class:`Canceled` or :class:`TaskTimeout` if the run should stop now."""
        left = self.time_left()
        if left is not None and left <= 0:
            raise TaskTimeout(f"Run {self.run.id} exceeded its time limit.")
        if self.is_canceled():
            raise Canceled(f"Run {self.run.id} was canceled.")

    # -- async twins ------------------------------------------------------------

    # On the one database thread: asyncio.to_thread would open (and leak) a database
    # connection in every pool thread of every run's event loop.
    async def aprogress(self, *args: Any, **kwargs: Any) -> None:
        await _off_loop(functools.partial(self.progress, *args, **kwargs))

    async def astep(self, name: str, message: str | None = None) -> None:
        await _off_loop(functools.partial(self.step, name, message))

    async def ais_canceled(self) -> bool:
        return await _off_loop(self.is_canceled)

    async def acheck(self) -> None:
        await _off_loop(self.check)

    # -- binding to the current thread/task ------------------------------------

    def bind(self) -> contextvars.Token[TaskContext | None]:
        return _current.set(self)

    @staticmethod
    def unbind(token: contextvars.Token[TaskContext | None]) -> None:
        _current.reset(token)


def progress(message: str | None = None, current: float | None = None, total: float | None = None) -> None:
    """Report progress from code that has no ``ctx`` (e.g. a ``django.tasks`` function)."""
    current_context().progress(message, current, total)
