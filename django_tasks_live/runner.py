"""Run one claimed run: call its handler with a context, then record the outcome.

``execute(run_id)`` is the seam other engines (django-q2) drive; the built-in worker
calls it in its executor processes, which also enforce hard time limits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError, OperationalError, close_old_connections
from django.utils import timezone

from . import conf, store
from .arguments import for_handler
from .context import Canceled, SleepRequested, TaskContext, TaskTimeout
from .jsonvalues import ensure_json, safe_str, storable_text
from .models import Run
from .registry import TaskSpec, UnknownTask, registry
from .states import CLAIMABLE, Status

logger = logging.getLogger(__name__)


def resolve(run: Run) -> TaskSpec:
    """The handler of a run: only registered handlers (and ``django.tasks`` tasks) run."""
    if run.kind == "django":
        from .backends import resolve_django_task

        return resolve_django_task(run.task_name)
    return registry.get(run.task_name)


def effective_timeout(run: Run, spec: TaskSpec | None) -> float | None:
    return run.timeout or (spec.timeout if spec else None) or conf.get("DEFAULT_TIMEOUT")


def backoff_delay(spec: TaskSpec, attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based), with ±25% jitter."""
    base = spec.backoff_base if spec.backoff_base is not None else conf.get("RETRY_BACKOFF_BASE")
    factor = {"fixed": 1, "linear": attempt, "exponential": 2 ** (attempt - 1)}[spec.backoff]
    delay = min(base * factor, conf.get("RETRY_BACKOFF_MAX"))
    return max(0.0, delay * random.uniform(0.75, 1.25))


# Records an attempt's outcome: (run, target status, fields) -> the updated run or None.
Recorder = Callable[[Run, Status, dict[str, Any]], Run | None]


def record_now(run: Run, target: Status, fields: dict[str, Any]) -> Run | None:
    """Write the outcome at once. It must not be lost to a database outage: retry until
    the database is back (the handler's work is done and cannot be redone for free)."""
    return _until_written(run, target, lambda: store.transition_if(run.pk, target, **fields))


def record_as_claimer(run: Run, target: Status, fields: dict[str, Any]) -> Run | None:
    """Like :func:`record_now`, through the workers' guarded outcome UPDATE: written only
    while the run is still its claimer's (a rescued and reclaimed run is not
    overwritten), from the claimed row (no re-read). For engines that claim one run at
    a time (django-q2)."""
    def write() -> Run | None:
        outcome = store.Outcome(run.pk, target, fields, run=run)
        finished, _ = store.settle([outcome], run.worker_id, None, 0)
        return finished[0] if finished else None

    return _until_written(run, target, write)


def _until_written(run: Run, target: Status, write: Callable[[], Run | None]) -> Run | None:
    delay = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            logger.warning("Run %s: cannot record %s yet (%s); retrying", run.pk, target, exc)
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def execute(
    run_id: int, worker_id: str = "inline", run: Run | None = None, record: Recorder = record_now
) -> Run | None:
    """Execute run ``run_id`` and record its outcome; returns the finished run.

    A run that is still claimable is claimed first (for engines that hand over ids);
    a run in any other status than claimed or running is left alone (returns None). ``run`` is the
    row as the claim returned it, which saves a read; ``record`` lets the worker batch
    outcome writes.
    """
    if run is None or run.pk != run_id or run.worker_id != worker_id:
        run = store.get_run(run_id)
    if run.status in CLAIMABLE:
        run = store.claim_run(run_id, worker_id)
        if run is None:
            return None
    if run.status not in (Status.CLAIMED, Status.RUNNING):
        return None
    try:
        spec = resolve(run)
    except UnknownTask as exc:
        return record(run, Status.FAILED, {
            "error": str(exc), "error_type": "UnknownTask",
            "worker_ids": [*run.worker_ids, run.worker_id],
        })
    timeout = effective_timeout(run, spec)
    ctx = TaskContext(
        run.pk, task=run.task_name, attempt=run.attempt, max_attempts=run.max_attempts,
        labels=run.labels, steps=run.steps,
        deadline=time.monotonic() + timeout if timeout else None,
    )
    _django_signal(run, "started")
    token = ctx.bind()
    try:
        args, kwargs = for_handler(spec, run.args, run.kwargs)  # enums, dataclasses, models
        skipped = _skip_reason(spec, ctx, run, args, kwargs)
        result = None if skipped else _call(spec, ctx, args, kwargs, timeout)
    except SleepRequested as pause:
        return _sleep(record, run, ctx, pause)
    except Canceled:
        return _finish(record, run, ctx, Status.CANCELED)
    except (TaskTimeout, TimeoutError) as exc:
        return _finish(record, run, ctx, Status.TIMED_OUT, exc=exc)
    except Exception as exc:
        return _fail_or_retry(record, run, ctx, spec, exc)
    finally:
        ctx.unbind(token)
    if skipped:
        return _finish(record, run, ctx, Status.SKIPPED, progress={"progress_message": skipped})
    try:
        ensure_json(result, "the result")
    except TypeError as exc:
        bad = TypeError(f"Task {run.task_name!r} returned a value that cannot be stored: {exc}")
        return _finish(record, run, ctx, Status.FAILED, exc=bad)
    # A handler that saw the cancel (is_canceled()) and returned ends canceled, its
    # result kept as a partial one; a request it did not see is decided by the store.
    target = Status.CANCELED if ctx.cancel_seen() else Status.COMPLETED
    return _finish(record, run, ctx, target, result=result)


def _skip_reason(spec: TaskSpec, ctx: TaskContext, run: Run, args: list[Any],
                 kwargs: dict[str, Any]) -> str | None:
    """Why the task's ``should_execute`` skips this run (None: it runs). A verdict that
    is neither a bool nor a reason raises, failing the run with a clear error."""
    if spec.should_execute is None:
        return None
    verdict = spec.should_execute(ctx, *args, **kwargs)
    if verdict is True:
        return None
    if verdict is False:
        return f"Skipped: should_execute of {run.task_name!r} returned False"
    if isinstance(verdict, str) and verdict.strip():
        return storable_text(f"Skipped: {verdict.strip()}")[:2000]
    raise TypeError(f"should_execute of task {run.task_name!r} must return True, False or a "
                    f"reason (a non-empty string), got {verdict!r}.")


def _call(spec: TaskSpec, ctx: TaskContext, args: Any, kwargs: Any, timeout: float | None) -> Any:
    if spec.is_async:
        async def main() -> Any:
            # wait_for cancels the coroutine at its next await once the limit passes.
            return await asyncio.wait_for(spec.func(ctx, *args, **kwargs), timeout)

        return asyncio.run(main())
    return spec.func(ctx, *args, **kwargs)


def _error_fields(run: Run, exc: BaseException) -> dict[str, Any]:
    exc_type = type(exc)
    # Exception text is whatever the handler made it (NUL, lone surrogates, a __str__
    # that raises): keep it storable, or the outcome's write would fail.
    type_path = safe_str(f"{exc_type.__module__}.{exc_type.__qualname__}")[:300]
    try:
        tb = storable_text("".join(traceback.format_exception(exc)))[-20_000:]
    except Exception as format_error:  # e.g. notes or a cause that cannot be rendered
        tb = f"(traceback unavailable: {safe_str(format_error)})"
    message = safe_str(exc)[:2000]
    entry = {
        "attempt": run.attempt,
        "type": type_path,
        "message": message,
        "traceback": tb,
        "worker": run.worker_id,
        "at": timezone.now().isoformat(),
    }
    return {
        "error": message or exc_type.__name__,
        "error_type": type_path,
        "traceback": tb,
        "errors": [*run.errors, entry],
    }


def _finish(
    record: Recorder,
    run: Run,
    ctx: TaskContext,
    target: Status,
    *,
    exc: BaseException | None = None,
    result: Any = None,
    extra: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
) -> Run | None:
    fields: dict[str, Any] = (ctx.final_fields(success=target == Status.COMPLETED)
                              if progress is None else progress)
    fields["worker_ids"] = [*run.worker_ids, run.worker_id]
    if target in (Status.COMPLETED, Status.CANCELED):
        fields["result"] = result  # a canceled handler that returned: its partial result
    if exc is not None:
        fields.update(_error_fields(run, exc))
    fields.update(extra or {})
    finished = record(run, target, fields)
    if finished is None:
        logger.warning("Run %s was ended elsewhere before it could become %s", run.pk, target)
        return None
    _django_signal(finished, "finished")
    return finished


def _sleep(record: Recorder, run: Run, ctx: TaskContext, pause: SleepRequested) -> Run | None:
    """``ctx.sleep()``: the run waits (claimable again at ``run_after``) and the attempt
    is given back, as a sleep is not a failure. A cancel requested meanwhile ends it."""
    extra = {"run_after": pause.until, "attempt": max(run.attempt - 1, 0)}
    return _finish(record, run, ctx, Status.RETRYING, extra=extra, progress=ctx.pause_fields(pause))


def _fail_or_retry(
    record: Recorder, run: Run, ctx: TaskContext, spec: TaskSpec, exc: Exception
) -> Run | None:
    retryable = not spec.retry_on or isinstance(exc, spec.retry_on)
    if retryable and run.attempt < run.max_attempts:
        delay = backoff_delay(spec, run.attempt)
        logger.info("Run %s attempt %s failed (%r); retry in %.1fs", run.pk, run.attempt, exc, delay)
        run_after = timezone.now() + dt.timedelta(seconds=delay)
        return _finish(record, run, ctx, Status.RETRYING, exc=exc, extra={"run_after": run_after})
    return _finish(record, run, ctx, Status.FAILED, exc=exc)


def _django_signal(run: Run, which: str) -> None:
    if run.kind == "django":
        from .backends import send_signal

        send_signal(run, which)
