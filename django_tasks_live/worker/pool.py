"""Executor processes and what each is doing, so the supervisor can enforce hard limits
and finish the work of an executor that dies."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings

from .. import store
from . import executor

logger = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")


@dataclass
class Assignment:
    """A run an executor claimed, as the supervisor tracks it."""

    run_id: int
    timeout: float | None
    started: float | None = None  # time.monotonic() when the executor began it
    deadline: float | None = None  # when it is killed (its timeout plus the grace period)

    def begin(self, grace: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout + grace if self.timeout else None


class Slot:
    """One executor process, the runs it claimed (it runs them in order; the head of
    the queue is executing now, so time limits apply to the head only), and the
    outcomes it reported but has not yet confirmed written."""

    def __init__(self, index: int, worker_id: str, grace: float, queues: Sequence[str] | None,
                 stop_flag: Any, claims_left: Any) -> None:
        self.index = index
        self.worker_id = worker_id
        self.grace = grace
        self.queues = list(queues) if queues else None
        self.stop_flag = stop_flag
        self.claims_left = claims_left
        self.queue: deque[Assignment] = deque()
        self.unsettled: list[store.Outcome] = []
        self._start()

    def _start(self) -> None:
        parent_end, child_end = _spawn.Pipe()
        self.conn: Connection = parent_end
        self.process = _spawn.Process(
            target=executor.main,
            args=(child_end, settings.SETTINGS_MODULE, self.worker_id, os.getpid(), self.queues,
                  self.stop_flag, self.claims_left),
            name=f"tasks-live-executor-{self.index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.ready = False
        self.starved = False  # its last claim found nothing due
        self.woken = False  # a wake-up is on its way (one at a time: the pipe stays empty)

    @property
    def current(self) -> Assignment | None:
        return self.queue[0] if self.queue else None

    @property
    def idle(self) -> bool:
        return self.ready and not self.queue and self.process.is_alive()

    @property
    def empty(self) -> bool:
        """Nothing claimed and nothing to write: the executor holds no work."""
        return not self.queue and not self.unsettled

    def known_run_ids(self) -> set[int]:
        return {a.run_id for a in self.queue} | {o.run_id for o in self.unsettled}

    # -- what the executor reports ------------------------------------------------

    def settled(self, claimed: list[tuple[int, float | None]], wanted: int) -> None:
        """It committed a settle: the outcomes it reported are written, and these runs
        (of the ``wanted`` it asked for) are queued on it, in order."""
        self.unsettled.clear()
        if wanted:
            self.starved = not claimed
        for run_id, timeout in claimed:
            self.queue.append(Assignment(run_id, timeout))
        if self.queue and self.queue[0].started is None:
            self.queue[0].begin(self.grace)

    def finished(self, run_id: int, outcome: store.Outcome | None) -> None:
        """The executor is done with ``run_id`` (the head); the next run begins."""
        if outcome is not None:
            self.unsettled.append(outcome)
        if not self.queue or self.queue[0].run_id != run_id:
            return
        self.queue.popleft()
        if self.queue:
            self.queue[0].begin(self.grace)

    def requeued(self, run_ids: list[int]) -> None:
        gone = set(run_ids)
        self.queue = deque(a for a in self.queue if a.run_id not in gone)

    def take_back(self) -> tuple[Assignment | None, list[int], list[store.Outcome]]:
        """Empty the slot: (the run executing now, the runs that never started, the
        outcomes not confirmed written)."""
        head = self.queue[0] if self.queue else None
        waiting = [a.run_id for a in list(self.queue)[1:]]
        outcomes, self.unsettled = self.unsettled, []
        self.queue.clear()
        return head, waiting, outcomes

    # -- talking to it -------------------------------------------------------------

    def receive(self) -> tuple[Any, ...] | None:
        """The executor's next message, or None if its pipe closed."""
        self.woken = False
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def wake(self) -> bool:
        """Tell an idle executor that runs may be due; True if it is woken (now or
        already)."""
        if self.woken or not self.idle:
            return self.woken
        try:
            self.conn.send("wake")
            self.woken = True
        except OSError:  # it died; its sentinel tells the supervisor
            pass
        return self.woken

    def kill(self) -> None:
        """Hard stop (the handler ignores its context); the pipe stays open for what it
        said last, and :meth:`restart` replaces it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the executor to exit (it writes its outcomes first); the pipe stays open
        for what it said last."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def restart(self) -> None:
        self.process.join(5)
        self.conn.close()
        self._start()
