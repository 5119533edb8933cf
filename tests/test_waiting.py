"""waiting: the polling loop behind Run.wait() and tasks_live.wait(), on plain objects."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from django_tasks_live.waiting import auntil_finished, until_finished


def reads(*statuses: str):
    """A ``get`` that returns a run in each of ``statuses`` in turn (then the last)."""
    seen = list(statuses)

    def get() -> SimpleNamespace:
        return SimpleNamespace(status=seen.pop(0) if len(seen) > 1 else seen[0])

    return get


def test_returns_the_first_terminal_read():
    run = until_finished(7, reads("pending", "running", "completed"), timeout=5, poll=0.001)
    assert run.status == "completed"


def test_async_twin_returns_the_first_terminal_read():
    get = reads("claimed", "failed")
    assert asyncio.run(auntil_finished(7, get, timeout=5, poll=0.001)).status == "failed"


def test_times_out_with_the_status_it_last_saw():
    with pytest.raises(TimeoutError, match=r"Run 7 is still running after 0\.05s"):
        until_finished(7, reads("running"), timeout=0.05, poll=0.01)


@pytest.mark.parametrize("timeout, poll, message", [
    (-1, 0.1, "timeout must be a non-negative number"),
    (True, 0.1, "timeout must be a non-negative number"),
    (None, 0, "poll must be a positive number"),
    (None, "1", "poll must be a positive number"),
])
def test_bad_timeout_or_poll_is_refused_before_any_read(timeout, poll, message):
    def get():
        raise AssertionError("read")

    with pytest.raises(ValueError, match=message):
        until_finished(7, get, timeout, poll)
