"""Executor processes and what each is doing, so the supervisor can enforce hard limits
and finish the work of an executor that dies."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings

from .. import store
from . import executor
from .runloop import new_gate

logger = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")


@dataclass
class Assignment:
    """A run an executor claimed, as the supervisor tracks it."""

    run_id: int
    timeout: float | None
    seq: int = 0  # its place among the executor's claims (see runloop.Claim)
    # Once it outlived SHORT_RUN_WINDOW: recorded as running, the runs behind it taken back.
    escalated: bool = False
    kill_at: float | None = None  # time.monotonic() when an unheeded cancel kills it


class Slot:
    """One executor process, the runs it claimed (it runs them in order; its gate says
    which one it is executing and since when, so time limits apply to that one only),
    and the outcomes it reported but has not yet confirmed written."""

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
        self.gate = new_gate()  # a new one per process: a killed one may die holding the lock
        self.claims = 0  # claims it reported (the last Assignment.seq)
        self.process = _spawn.Process(
            target=executor.main,
            args=(child_end, settings.SETTINGS_MODULE, self.worker_id, os.getpid(), self.queues,
                  self.stop_flag, self.claims_left, self.gate),
            name=f"tasks-live-executor-{self.index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.ready = False
        self.starved = False  # its last claim found nothing due
        self.woken = False  # a wake-up is on its way (one at a time: the pipe stays empty)

    def executing(self) -> tuple[Assignment | None, float]:
        """The run whose handler is executing now and since when (time.monotonic()), as
        the gate says; (None, 0.0) between runs. Read without the lock (the executor
        writes the time before the sequence number, so a torn read errs late)."""
        gate = self.gate.get_obj()
        seq, began = int(gate[0]), gate[1]
        for assignment in self.queue:
            if assignment.seq >= seq:
                return (assignment, began) if assignment.seq == seq else (None, 0.0)
        return None, 0.0

    @property
    def current(self) -> Assignment | None:
        return self.executing()[0]

    def deadline(self) -> float | None:
        """When the executing run is killed: its time limit plus the grace period, or a
        cancel request plus the grace period, whichever comes first."""
        assignment, began = self.executing()
        if assignment is None:
            return None
        limits = [assignment.kill_at] if assignment.kill_at is not None else []
        if assignment.timeout:
            limits.append(began + assignment.timeout + self.grace)
        return min(limits, default=None)

    def waiting(self) -> list[Assignment]:
        """Runs it claimed and has not begun (as far as the supervisor knows)."""
        seq = int(self.gate.get_obj()[0])
        return [a for a in self.queue if a.seq > seq]

    def withdraw(self, run_ids: set[int] | None = None) -> list[int]:
        """Take back claimed runs it has not begun (those of ``run_ids``, or all); returns
        their ids, which it will never begin. Under the gate's lock: the executor begins
        a run only under it, after reading its messages."""
        lock = self.gate.get_lock()
        if not lock.acquire(timeout=0.2):  # busy or dead holding it: try again later
            return []
        try:
            chosen = [a for a in self.waiting() if run_ids is None or a.run_id in run_ids]
            if chosen:
                self.conn.send(("withdraw", [a.run_id for a in chosen]))
        except OSError:  # it died: its sentinel says so and take_back() has them
            return []
        finally:
            lock.release()
        gone = {a.run_id for a in chosen}
        self.queue = deque(a for a in self.queue if a.run_id not in gone)
        return [a.run_id for a in chosen]

    def take_unsettled(self) -> list[store.Outcome]:
        outcomes, self.unsettled = self.unsettled, []
        return outcomes

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
            self.claims += 1
            self.queue.append(Assignment(run_id, timeout, self.claims))

    def finished(self, run_id: int, outcome: store.Outcome | None) -> None:
        """The executor is done with ``run_id`` (it executed it, or found it ended)."""
        if outcome is not None:
            self.unsettled.append(outcome)
        if self.queue and self.queue[0].run_id == run_id:
            self.queue.popleft()
        else:
            self.queue = deque(a for a in self.queue if a.run_id != run_id)

    def requeued(self, run_ids: list[int]) -> None:
        gone = set(run_ids)
        self.queue = deque(a for a in self.queue if a.run_id not in gone)

    def take_back(self) -> tuple[Assignment | None, list[int], list[store.Outcome]]:
        """Empty the slot of a stopped executor: (the run it was executing, the runs it
        never began, the outcomes not confirmed written)."""
        head = self.current
        waiting = [a.run_id for a in self.queue if a is not head]
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

    def tell(self, message: tuple[Any, ...]) -> None:
        """Send the executor a message (it reads it before its next claim)."""
        try:
            self.conn.send(message)
        except OSError:  # it died; its sentinel tells the supervisor
            pass

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
