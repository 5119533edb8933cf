"""Executor processes and what each is doing, so the supervisor can enforce hard limits."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings

from ..models import Run
from . import executor

logger = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")

# Bytes of queued, not yet begun runs a busy executor's pipe may hold: well under a
# socket buffer, so sending to it never blocks the supervisor (a supervisor blocked
# on a full pipe stops reading the executor's replies, and both would wait forever).
PIPE_BUDGET = 64 * 1024

_ATTNAMES = [f.attname for f in Run._meta.concrete_fields]


def encode(run: Run) -> bytes:
    """``run`` for an executor: its column values, pickled (a pickled model instance
    costs the supervisor several times more). Its size counts against PIPE_BUDGET."""
    return pickle.dumps(tuple(getattr(run, name) for name in _ATTNAMES), pickle.HIGHEST_PROTOCOL)


def decode(data: bytes, using: str) -> Run:
    """The run :func:`encode` packed (in the executor)."""
    return Run.from_db(using, _ATTNAMES, pickle.loads(data))


@dataclass
class Assignment:
    run: Run
    timeout: float | None
    size: int = 0  # bytes of its message
    started: float | None = None  # time.monotonic() when the executor began it
    deadline: float | None = None  # when it is killed (its timeout plus the grace period)

    def begin(self, grace: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout + grace if self.timeout else None


class Slot:
    """One executor process and the runs queued on its pipe (it runs them in order).

    A short queue per executor keeps it busy while the supervisor commits; the head of
    the queue is the run executing now, so time limits apply to the head only.
    """

    def __init__(self, index: int, worker_id: str, grace: float, stop_flag: Any) -> None:
        self.index = index
        self.stop_flag = stop_flag
        self.worker_id = worker_id
        self.grace = grace
        self.queue: deque[Assignment] = deque()
        self.queued_bytes = 0  # sizes of the runs in ``queue``, kept with it
        self.ready = False
        self._start()

    def _start(self) -> None:
        parent_end, child_end = _spawn.Pipe()
        self.conn: Connection = parent_end
        self.process = _spawn.Process(
            target=executor.main,
            args=(child_end, settings.SETTINGS_MODULE, self.worker_id, os.getpid(), self.stop_flag),
            name=f"tasks-live-executor-{self.index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.ready = False
        self.unsent: list[bytes] = []  # assigned, not yet sent (see send())

    @property
    def current(self) -> Assignment | None:
        return self.queue[0] if self.queue else None

    def has_room(self, depth: int) -> bool:
        return self.ready and len(self.queue) < depth and self.process.is_alive()

    def can_take(self, size: int, depth: int) -> bool:
        """Room for a run of ``size`` bytes: an idle executor is reading its pipe and takes
        any size; a busy one only while its pipe stays within PIPE_BUDGET."""
        if not self.has_room(depth):
            return False
        return not self.queue or self.waiting_bytes + size <= PIPE_BUDGET

    @property
    def waiting_bytes(self) -> int:
        """Bytes of the runs queued behind the one executing (still in the pipe)."""
        return self.queued_bytes - self.queue[0].size if self.queue else 0

    def assign(self, run: Run, data: bytes, timeout: float | None) -> None:
        """Queue ``run`` (``data``: :func:`encode` of it) here; :meth:`send` sends it."""
        assignment = Assignment(run, timeout, len(data))
        if not self.queue:
            assignment.begin(self.grace)
        self.queue.append(assignment)
        self.queued_bytes += assignment.size
        self.unsent.append(data)

    def send(self) -> None:
        """Hand the runs assigned since the last call to the executor, in one message."""
        if self.unsent:
            batch, self.unsent = self.unsent, []
            self.conn.send(batch)

    def finished(self, run_id: int) -> float | None:
        """The executor is done with ``run_id`` (the head); the next run begins.
        Returns how long the run took."""
        if not self.queue or self.queue[0].run.pk != run_id:
            return None
        done = self.queue.popleft()
        self.queued_bytes -= done.size
        if self.queue:
            self.queue[0].begin(self.grace)
        return time.monotonic() - done.started if done.started is not None else None

    def take_back(self) -> tuple[Assignment | None, list[Run]]:
        """Empty the queue: (the run executing now, the runs that never started)."""
        if not self.queue:
            return None, []
        head, *waiting = self.queue
        self.queue.clear()
        self.queued_bytes = 0
        return head, [a.run for a in waiting]

    def receive(self) -> tuple[Any, ...] | None:
        """The executor's next message, or None if its pipe closed."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def kill(self) -> None:
        """Hard stop (the handler ignores its context); a fresh executor replaces it."""
        if self.process.is_alive():
            self.process.kill()
        self.restart()

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()

    def restart(self) -> None:
        self.process.join(5)
        self.conn.close()
        self._start()
