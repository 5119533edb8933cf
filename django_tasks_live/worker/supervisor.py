"""The supervisor: claims runs, feeds executor processes, and keeps the fleet honest.

One loop, no threads: it waits on the executors' pipes and process sentinels and on the
PostgreSQL LISTEN socket, so a finished run or a new one wakes it at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import Any, TextIO

from django.db import DatabaseError, close_old_connections, router

from .. import conf, store
from ..models import Run
from ..registry import registry
from ..runner import effective_timeout, resolve
from ..states import Status
from .pool import Slot
from .wakeup import Listener

logger = logging.getLogger(__name__)


class WorkerIdInUse(RuntimeError):
    pass


class Supervisor:
    def __init__(
        self,
        *,
        concurrency: int = 1,
        queues: Sequence[str] | None = None,
        burst: bool = False,
        max_tasks: int | None = None,
        worker_id: str | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.queues = list(queues) if queues else None
        self.burst = burst
        self.max_tasks = max_tasks
        self.explicit_id = worker_id is not None
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stdout = stdout or sys.stdout
        self.slots: list[Slot] = []
        self.buffer: deque[Run] = deque()  # claimed, not yet handed to an executor
        self.claimed = 0
        self.processed = 0
        self.draining = False
        self.exit_now = False
        self.listener = Listener(router.db_for_write(Run))
        self._wake = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_tick = 0.0
        self._db_backoff = 0.0

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self._register()
        self.slots = [Slot(i, self.id) for i in range(self.concurrency)]
        try:
            self._wait_ready()
            self.listener.open()
            self._say(f"tasks_worker ready: id={self.id} concurrency={self.concurrency} "
                      f"queues={','.join(self.queues or ['*'])}")
            while not self._finished():
                self._iterate()
        finally:
            self._shutdown()
        return 1 if self.exit_now else 0

    def _register(self) -> None:
        timeout = conf.get("HEARTBEAT_TIMEOUT")
        if self.explicit_id:
            if store.worker_alive(self.id, timeout):
                raise WorkerIdInUse(f"Worker id {self.id!r} is in use by a live worker.")
            # Our own previous incarnation died: its runs will not finish.
            store.recover_lost_runs(timeout, worker_id=self.id)
        store.register_worker(self.id, socket.gethostname(), os.getpid(), self.queues or [],
                              self.concurrency)
        store.sync_tasks(registry)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not all(slot.ready for slot in self.slots):
            if time.monotonic() > deadline or self.exit_now:
                raise RuntimeError("Executor processes did not start in 60 s.")
            for conn in wait([slot.conn for slot in self.slots if not slot.ready], timeout=1):
                slot = next(s for s in self.slots if s.conn is conn)
                self._on_message(slot, slot.receive())

    def _finished(self) -> bool:
        if self.exit_now:
            return True
        in_flight = any(slot.assignment for slot in self.slots)
        return (self.draining or self._limit_reached()) and not in_flight and not self.buffer

    def _limit_reached(self) -> bool:
        return self.max_tasks is not None and self.processed >= self.max_tasks

    def _shutdown(self) -> None:
        try:
            if self.buffer:
                store.requeue([run.pk for run in self.buffer], reason="")
                self.buffer.clear()
            for slot in self.slots:
                if slot.assignment is not None:  # only after a second signal
                    slot.kill()
                    store.release(slot.assignment.run.pk, "WorkerStopped",
                                  "worker stopped before the run finished", counts=False)
                    slot.assignment = None
            for slot in self.slots:
                slot.stop()
            store.stop_worker(self.id)
        except DatabaseError as exc:
            logger.error("Could not record the worker's shutdown: %s", exc)
        finally:
            self.listener.close()
        self._say(f"tasks_worker stopped: processed={self.processed}")

    def _install_signals(self) -> None:
        def handle(signum: int, frame: Any) -> None:
            if self.draining:
                self.exit_now = True
                self._say("second signal: stopping now")
            else:
                self.draining = True
                self._say("draining: finishing in-flight runs (signal again to stop now)")

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- the loop ---------------------------------------------------------------

    def _iterate(self) -> None:
        try:
            self._housekeeping()
            if self.draining and self.buffer:
                store.requeue([run.pk for run in self.buffer])
                self.buffer.clear()
            self._claim_if_needed()
            self._dispatch()
            self._enforce_deadlines()
            if self.burst and self._idle_and_empty():
                self.draining = True
                return
            self._db_backoff = 0.0
        except DatabaseError as exc:
            self._db_backoff = min(max(self._db_backoff * 2, 0.5), 10.0)
            logger.warning("Database unavailable (%s); retrying in %.1fs", exc, self._db_backoff)
            close_old_connections()
            self.listener.close()
            self._sleep_handling_messages(self._db_backoff)
            return
        self._wait_for_events()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + conf.get("HEARTBEAT_INTERVAL")
            store.heartbeat(self.id, self.processed)
            self._kill_canceled()
            for run in store.recover_lost_runs(conf.get("HEARTBEAT_TIMEOUT")):
                logger.warning("Recovered run %s of lost worker (now %s)", run.pk, run.status)
                self._wake = True
            if not self.listener.active:
                self.listener.open()
        if now >= self._next_tick and not self.draining:
            self._next_tick = now + 1.0
            from .. import schedules

            if schedules.tick():
                self._wake = True

    def _capacity(self) -> int:
        """How many more runs to claim: fill idle executors plus a small buffer."""
        busy = sum(1 for slot in self.slots if slot.assignment)
        want = 2 * self.concurrency - busy - len(self.buffer)
        if self.max_tasks is not None:
            want = min(want, self.max_tasks - self.claimed)
        return max(0, min(want, conf.get("CLAIM_BATCH")))

    def _claim_if_needed(self) -> None:
        if self.draining or self._limit_reached():
            return
        now = time.monotonic()
        if len(self.buffer) >= self.concurrency or not (self._wake or now >= self._next_poll):
            return
        limit = self._capacity()
        if limit == 0:
            return
        self._wake = False
        poll = conf.get("PG_POLL_INTERVAL" if self.listener.active else "POLL_INTERVAL")
        self._next_poll = now + poll
        claimed = store.claim(self.id, self.queues, limit)
        self.claimed += len(claimed)
        self.buffer.extend(claimed)
        if len(claimed) == limit:
            self._wake = True  # probably more waiting

    def _dispatch(self) -> None:
        grace = conf.get("KILL_GRACE")
        for slot in self.slots:
            if not self.buffer:
                return
            if slot.idle:
                run = self.buffer.popleft()
                slot.assign(run, self._timeout_of(run), grace)

    @staticmethod
    def _timeout_of(run: Run) -> float | None:
        try:
            return effective_timeout(run, resolve(run))
        except Exception:  # unknown task: the executor records the failure
            return effective_timeout(run, None)

    def _idle_and_empty(self) -> bool:
        if self.buffer or any(slot.assignment for slot in self.slots):
            return False
        return not store.has_due(self.queues)

    def _wait_for_events(self) -> None:
        if self.exit_now or (self._wake and self._capacity()):
            timeout = 0.0
        else:
            timeout = max(0.0, self._next_poll - time.monotonic())
            if self.listener.active and not self.buffer:
                timeout = max(timeout, 0.001)
            deadlines = [s.assignment.deadline for s in self.slots
                         if s.assignment and s.assignment.deadline]
            if deadlines:
                timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
            timeout = min(timeout, max(0.0, self._next_heartbeat - time.monotonic()))
        self._sleep_handling_messages(timeout)

    def _sleep_handling_messages(self, timeout: float) -> None:
        waitables: list[Any] = []
        for slot in self.slots:
            waitables += [slot.conn, slot.process.sentinel]
        if self.listener.active:
            waitables.append(self.listener)
        try:
            ready = wait(waitables, timeout=timeout)
        except InterruptedError:
            return
        for obj in ready:
            if obj is self.listener:
                if self.listener.drain():
                    self._wake = True
                continue
            slot = next((s for s in self.slots if obj in (s.conn, s.process.sentinel)), None)
            if slot is None:
                continue
            if obj is slot.conn:
                self._on_message(slot, slot.receive())
            elif not slot.process.is_alive():
                self._on_executor_death(slot)

    # -- executor events --------------------------------------------------------

    def _on_message(self, slot: Slot, message: tuple[Any, ...] | None) -> None:
        if message is None:
            if not slot.process.is_alive():
                self._on_executor_death(slot)
            return
        kind = message[0]
        if kind == "ready":
            slot.ready = True
        elif kind in ("done", "error"):
            if kind == "error":
                logger.error("Executor failed on run %s: %s", message[1], message[2])
                store.release(message[1], "ExecutorError", message[2])
            slot.assignment = None
            self.processed += 1
            self._wake = True

    def _on_executor_death(self, slot: Slot) -> None:
        code = slot.process.exitcode
        if slot.assignment is not None:
            run = slot.assignment.run
            logger.error("Executor died (exit %s) while running run %s", code, run.pk)
            store.release(run.pk, "ExecutorDied", f"executor process exited with code {code}")
            slot.assignment = None
            self.processed += 1
        slot.restart()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            assignment = slot.assignment
            if assignment and assignment.deadline is not None and now >= assignment.deadline:
                self._kill(slot, Status.TIMED_OUT, "TaskTimeout",
                           "time limit exceeded; the handler did not stop and was killed")

    def _kill_canceled(self) -> None:
        requested = store.cancel_requested(self.id)
        if not requested:
            return
        grace = conf.get("KILL_GRACE")
        for slot in self.slots:
            assignment = slot.assignment
            if assignment is None or assignment.run.pk not in requested:
                continue
            asked = requested[assignment.run.pk]
            if asked is not None and time.time() - asked.timestamp() >= grace:
                self._kill(slot, Status.CANCELED, "Canceled",
                           "canceled; the handler did not stop and was killed")

    def _kill(self, slot: Slot, target: Status, error_type: str, message: str) -> None:
        assert slot.assignment is not None
        run = slot.assignment.run
        slot.kill()
        slot.assignment = None
        self.processed += 1
        store.end_killed_run(run.pk, target, error_type, message)
        logger.warning("Run %s: %s", run.pk, message)

    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()
