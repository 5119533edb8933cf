"""Waiting for a run to finish, by re-reading its row with a growing delay.

Below the models and the api: ``Run.wait()`` and ``tasks_live.wait()`` share it, so the
model does not import the api.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from asgiref.sync import sync_to_async

from .states import TERMINAL

MAX_DELAY = 1.0  # the delay between reads grows by half each time, up to this


class _HasStatus(Protocol):
    status: str



def check_wait(timeout: Any, poll: Any) -> None:
    """Refuse a ``timeout`` or ``poll`` that is not a number of seconds."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}.")
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not poll > 0:
        raise ValueError(f"poll must be a positive number of seconds, got {poll!r}.")


def until_finished[R: _HasStatus](run_id: int, get: Callable[[], R], timeout: float | None, poll: float) -> R:
    """``get()`` (the run, read again) once its status is terminal; ``TimeoutError``
    after ``timeout`` seconds."""
    check_wait(timeout, poll)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = poll
    while True:
        current = get()
        if current.status in TERMINAL:
            return current
        time.sleep(_next_sleep(run_id, current, timeout, deadline, delay))
        delay = min(delay * 1.5, MAX_DELAY)


async def auntil_finished[R: _HasStatus](run_id: int, get: Callable[[], R], timeout: float | None,
                          poll: float) -> R:
    """Async twin of :func:`until_finished` (``get`` runs in a thread)."""
    check_wait(timeout, poll)
    deadline = None if timeout is None else time.monotonic() + timeout
    aget = sync_to_async(get)
    delay = poll
    while True:
        current = await aget()
        if current.status in TERMINAL:
            return current
        await asyncio.sleep(_next_sleep(run_id, current, timeout, deadline, delay))
        delay = min(delay * 1.5, MAX_DELAY)


def _next_sleep(run_id: int, current: _HasStatus, timeout: float | None,
                deadline: float | None, delay: float) -> float:
    if deadline is None:
        return delay
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Run {run_id} is still {current.status} after {timeout}s.")
    return min(delay, left)
