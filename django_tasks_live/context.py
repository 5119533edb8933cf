"""What a running handler sees: ``ctx.progress()``, ``ctx.step()``, cancel and timeout checks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from . import conf, events, store
from .jsonvalues import ensure_json, safe_str
from .models import public_steps
from .states import ACTIVE, Status

logger = logging.getLogger(__name__)


def _message_text(message: Any) -> str:
    """A progress message as stored: text, storable (no NUL or lone surrogate: they
    would fail the write on every database), at most 2,000 characters."""
    return safe_str(message)[:2000]


class Canceled(Exception):
    """Raised by ``ctx.check()`` when a cancel was requested for the run."""


class TaskTimeout(Exception):
    """Raised by ``ctx.check()`` when the run's time limit has passed."""


class SleepRequested(BaseException):
    """Raised by ``ctx.sleep()`` to end the attempt; the runner resumes the run at ``until``.

    A ``BaseException`` so that a handler's ``except Exception`` does not swallow it.
    """

    def __init__(self, name: str, until: dt.datetime) -> None:
        self.name, self.until = name, until
        super().__init__(f"sleeping until {until.isoformat()} ({name})")


MAX_STEP_NAME = 100


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
        # Never read yet: the first check reads the status, so a cancel requested just
        # before the handler began is seen at once.
        self._last_status_read = -math.inf
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

    # -- durable steps ----------------------------------------------------------

    def step_run[T](self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn()`` as the durable step ``name`` and store its result (JSON) on the run.

        A step that completed in an earlier attempt (a retry, or a run rescued after its
        worker was killed) is not executed again: its stored result is returned. A step
        runs at least once: if its result cannot be stored, the attempt fails and the
        step runs again on the next one.
        """
        done, result = self._replay(name)
        if done:
            return result
        self._begin(name)
        result = fn()
        self._complete(name, result)
        return result

    def sleep(self, name: str, seconds: float) -> None:
        """End this attempt now and resume the run ``seconds`` later, freeing the executor.

        The run waits as ``retrying`` (claimable once ``run_after`` passes) without using
        up an attempt. When the handler runs again, completed durable steps return their
        stored results and this call, its time having come, returns at once.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            0 <= seconds < float("inf")
        ):
            raise ValueError(f"sleep seconds must be a finite number >= 0, got {seconds!r}.")
        step = self._durable_step(name)
        now = timezone.now()
        if step["state"] == "done":
            return
        if step["state"] == "sleeping":
            until = dt.datetime.fromisoformat(step["until"])
            if until <= now:  # woken: the sleep is over
                step.pop("until", None)
                self._save_step(step, "done")
                return
        else:
            until = now + dt.timedelta(seconds=seconds)
            step.update(state="sleeping", until=until.isoformat())
        # Not written here: the runner writes it with the attempt's outcome.
        raise SleepRequested(name, until)

    def pause_fields(self, pause: SleepRequested) -> dict[str, Any]:
        """The progress fields to write when the attempt ends in ``ctx.sleep()``."""
        self._fields["steps"] = self._steps
        self._fields["progress_message"] = _message_text(
            f"Sleeping until {pause.until.isoformat(timespec='seconds')} ({pause.name})"
        )
        return dict(self._fields)

    def _durable_step(self, name: str) -> dict[str, Any]:
        """The step ``name`` (declared, or added to the run's steps on first use)."""
        if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME or "\x00" in name:
            raise ValueError(
                f"A step name must be a non-empty string of at most {MAX_STEP_NAME} characters "
                f"(no NUL), got {name!r}."
            )
        for step in self._steps:
            if step["name"] == name:
                return step
        step = {"name": name, "weight": 1.0, "state": "pending"}
        self._steps.append(step)
        return step

    def _replay(self, name: str) -> tuple[bool, Any]:
        """(True, stored result) if the durable step ``name`` completed before."""
        step = self._durable_step(name)
        if step["state"] == "done" and "result" in step:
            return True, step["result"]
        return False, None

    def _begin(self, name: str) -> None:
        for step in self._steps:
            if step["state"] == "running":
                step["state"] = "done"
        self._save_step(self._durable_step(name), "running")

    def _complete(self, name: str, result: Any) -> None:
        ensure_json(result, f"the result of step {name!r}")
        step = self._durable_step(name)
        step["result"] = result
        self._save_step(step, "done")

    def _save_step(self, step: dict[str, Any], state: str) -> None:
        """Write ``step`` in ``state`` now. Unlike progress, a failed write is raised: a
        step reported done must be stored before the handler goes on."""
        step["state"] = state
        self._fields.update(steps=self._steps, percent=self._percent())
        fields = dict(self._fields)
        status = db_call(lambda: store.save_progress(self.run.id, **fields))
        self._last_persist = self._last_push = time.monotonic()
        self._dirty = False
        self._note_status(status or Status.CANCELED)
        if self._status not in ACTIVE:
            # Rescued elsewhere or ended: this attempt must not go on (nothing was written).
            raise Canceled(f"Run {self.run.id} is no longer running here ({self._status}).")

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
            "steps": public_steps(self._steps),
        }

    # -- cancel and timeout -----------------------------------------------------

    def _note_status(self, status: str | None) -> None:
        self._last_status_read = time.monotonic()
        if status is not None:
            self._status = status

    def is_canceled(self) -> bool:
        """True once a cancel was requested (re-read from the database now and then)."""
        if self._stopping():
            return True
        if time.monotonic() - self._last_status_read >= conf.get("CANCEL_CHECK_INTERVAL"):
            try:
                status = db_call(lambda: store.statuses([self.run.id]).get(self.run.id))
            except DatabaseError:
                db_call(close_old_connections)
                self._last_status_read = time.monotonic()
                return False
            self._note_status(status or Status.CANCELED)
        return self._stopping()

    def _stopping(self) -> bool:
        """The last status seen says stop: a cancel was asked, or the run was ended
        elsewhere (claimed and running both mean go on)."""
        return self._status == Status.CANCEL_REQUESTED or self._status not in ACTIVE

    def cancel_seen(self) -> bool:
        """True if a cancel request was already seen (no database read: the runner
        asks when a handler returns)."""
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

    async def astep_run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Async twin of :meth:`step_run`; ``fn`` may return an awaitable."""
        done, result = await _off_loop(functools.partial(self._replay, name))
        if done:
            return result
        await _off_loop(functools.partial(self._begin, name))
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        await _off_loop(functools.partial(self._complete, name, result))
        return result

    async def asleep(self, name: str, seconds: float) -> None:
        await _off_loop(functools.partial(self.sleep, name, seconds))

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
