"""The supervisor: claims runs, feeds executor processes, and keeps the fleet honest.

One loop, no threads: it waits on the executors' pipes and process sentinels and on the
PostgreSQL LISTEN socket, so a finished run or a new one wakes it at once.
"""

from __future__ import annotations

import logging
import multiprocessing
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

from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, router

from .. import conf, store
from ..models import Run
from ..registry import registry
from ..runner import effective_timeout, resolve
from ..states import Status
from . import pool
from .pool import Slot
from .wakeup import Listener

logger = logging.getLogger(__name__)


# How much work an executor's queue should hold: enough to outlast a commit or two.
PIPELINE_SECONDS = 0.02


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
        self.outcomes: list[store.Outcome] = []  # reported by executors, not yet written
        self.claimed = 0
        self.processed = 0
        self.draining = False
        self.exit_now = False
        self.listener = Listener(router.db_for_write(Run))
        # Set when draining: executors skip (and report) runs queued on their pipes.
        self.stop_flag = multiprocessing.get_context("spawn").Value("b", 0, lock=False)
        self._wake = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_tick = 0.0
        self._db_backoff = 0.0
        self.avg_run_seconds = PIPELINE_SECONDS  # moving average of how long runs take

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self._register()
        grace = conf.get("KILL_GRACE")
        self.slots = [Slot(i, self.id, grace, self.stop_flag) for i in range(self.concurrency)]
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
        in_flight = any(slot.queue for slot in self.slots) or self.outcomes
        return (self.draining or self._limit_reached()) and not in_flight and not self.buffer

    def _limit_reached(self) -> bool:
        return self.max_tasks is not None and self.processed >= self.max_tasks

    def _shutdown(self) -> None:
        try:
            if self.outcomes:
                store.settle(self.outcomes, self.id, self.queues, 0)
                self.outcomes = []
            for slot in self.slots:  # runs are left only after a second signal
                head, waiting = slot.take_back()
                self.buffer.extend(waiting)
                if head is not None:
                    slot.process.kill()
                    store.release(head.run.pk, "WorkerStopped",
                                  "worker stopped before the run finished", counts=False)
            self._requeue_buffer()
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
            if self.draining:
                self._requeue_not_started()
            self._dispatch()  # first: executors work while the settle commits
            self._settle()
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

    def _depth(self) -> int:
        """Runs per executor: the one executing plus enough queued ones to cover about
        PIPELINE_SECONDS of work (short runs get batched, long ones are not hoarded)."""
        wanted = int(PIPELINE_SECONDS / max(self.avg_run_seconds, 1e-4))
        return 1 + max(0, min(wanted, conf.get("PREFETCH")))

    def _capacity(self) -> int:
        """How many more runs to claim: fill idle executors plus a prefetch buffer, so
        claims (and the outcomes written with them) go in batches, not one per run."""
        assigned = sum(len(slot.queue) for slot in self.slots)
        want = self.concurrency * self._depth() - assigned - len(self.buffer)
        if self.max_tasks is not None:
            want = min(want, self.max_tasks - self.claimed)
        return max(0, min(want, conf.get("CLAIM_BATCH")))

    def _settle(self) -> None:
        """Write reported outcomes and claim more runs, together in one transaction."""
        limit = self._claim_limit()
        if not self.outcomes and not limit:
            return
        outcomes, self.outcomes = self.outcomes, []
        try:
            _, claimed = store.settle(outcomes, self.id, self.queues, limit)
        except (DataError, IntegrityError) as exc:
            # Not an outage: retrying the same batch would fail forever and wedge the
            # worker. Write the outcomes one by one; a refused one fails its run.
            logger.error("A batch of outcomes was refused (%s); writing them one by one", exc)
            self._settle_one_by_one(outcomes)
            return
        except DatabaseError:
            self.outcomes = outcomes + self.outcomes  # keep them for the next round
            raise
        self.claimed += len(claimed)
        self.buffer.extend(claimed)
        if limit and len(claimed) == limit:
            self._wake = True  # probably more waiting

    def _settle_one_by_one(self, outcomes: list[store.Outcome]) -> None:
        for outcome in outcomes:
            try:
                store.settle([outcome], self.id, self.queues, 0)
            except (DataError, IntegrityError) as exc:
                logger.error("Run %s: its outcome could not be stored: %s", outcome.run_id, exc)
                store.end_killed_run(outcome.run_id, Status.FAILED, "OutcomeNotStored",
                                     f"the run's outcome could not be stored: {exc}"[:2000])

    def _claim_room(self) -> int:
        """How many runs a claim would take now: 0 until a batch's worth is free (fewer,
        bigger claims). A batch is at most CLAIM_BATCH, or a wide worker would wait for
        room it can never claim at once."""
        if self.draining or self._limit_reached():
            return 0
        limit = self._capacity()
        batch = min(conf.get("CLAIM_BATCH"), self.concurrency * self._depth() // 2)
        return limit if limit >= max(1, batch) else 0

    def _claim_limit(self) -> int:
        limit = self._claim_room()
        now = time.monotonic()
        if not limit or not (self._wake or now >= self._next_poll):
            return 0
        self._wake = False
        poll = conf.get("PG_POLL_INTERVAL" if self.listener.active else "POLL_INTERVAL")
        self._next_poll = now + poll
        return limit

    def _dispatch(self) -> None:
        """Hand buffered runs to executors, shortest queue first."""
        depth = self._depth()
        while self.buffer and any(slot.has_room(depth) for slot in self.slots):
            run = self.buffer[0]
            data = pool.encode(run)
            open_slots = [slot for slot in self.slots if slot.can_take(len(data), depth)]
            if not open_slots:
                break
            slot = min(open_slots, key=lambda s: len(s.queue))
            self.buffer.popleft()
            slot.assign(run, data, self._timeout_of(run))
        for slot in self.slots:
            slot.send()  # one message per executor and round: fewer pickles and syscalls

    def _requeue_not_started(self) -> None:
        """Draining: runs claimed but not begun go back to pending for other workers
        (executors report the ones queued on their pipes as skipped)."""
        self.stop_flag.value = 1
        self._requeue_buffer()

    def _requeue_buffer(self) -> None:
        if self.buffer:
            store.requeue([run.pk for run in self.buffer])
            self.buffer.clear()

    @staticmethod
    def _timeout_of(run: Run) -> float | None:
        try:
            return effective_timeout(run, resolve(run))
        except Exception:  # unknown task: the executor records the failure
            return effective_timeout(run, None)

    def _idle_and_empty(self) -> bool:
        if self.buffer or self.outcomes or any(slot.queue for slot in self.slots):
            return False
        return not store.has_due(self.queues)

    def _wait_for_events(self) -> None:
        # Only what _settle() would act on ends the wait at once (no spinning while
        # the free room is less than a batch).
        if self.exit_now or self.outcomes or (self._wake and self._claim_room()):
            timeout = 0.0
        else:
            timeout = max(0.0, self._next_poll - time.monotonic())
            if self.listener.active and not self.buffer:
                timeout = max(timeout, 0.001)
            deadlines = [s.current.deadline for s in self.slots
                         if s.current and s.current.deadline]
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
                while slot.conn.poll():  # take everything waiting: one settle for all of it
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
        elif kind == "skipped":
            slot.finished(message[1])
            store.requeue([message[1]])
        elif kind in ("done", "error"):
            if kind == "error":
                logger.error("Executor failed on run %s: %s", message[1], message[2])
                store.release(message[1], "ExecutorError", message[2])
            elif len(message) > 2:  # ("done", run id, target, fields): its outcome
                head = slot.current
                claimed = head.run if head is not None and head.run.pk == message[1] else None
                self.outcomes.append(store.Outcome(*message[1:], run=claimed))
            took = slot.finished(message[1])
            if took is not None:
                self.avg_run_seconds += 0.2 * (took - self.avg_run_seconds)
            self.processed += 1
            self._wake = True

    def _on_executor_death(self, slot: Slot) -> None:
        code = slot.process.exitcode
        head, waiting = slot.take_back()
        self.buffer.extendleft(reversed(waiting))
        if head is not None:
            logger.error("Executor died (exit %s) while running run %s", code, head.run.pk)
            store.release(head.run.pk, "ExecutorDied", f"executor process exited with code {code}")
            self.processed += 1
        slot.restart()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            assignment = slot.current
            if assignment and assignment.deadline is not None and now >= assignment.deadline:
                self._kill(slot, Status.TIMED_OUT, "TaskTimeout",
                           "time limit exceeded; the handler did not stop and was killed")

    def _kill_canceled(self) -> None:
        requested = store.cancel_requested(self.id)
        if not requested:
            return
        grace = conf.get("KILL_GRACE")
        for slot in self.slots:
            assignment = slot.current
            if assignment is None or assignment.run.pk not in requested:
                continue
            asked = requested[assignment.run.pk]
            if asked is not None and time.time() - asked.timestamp() >= grace:
                self._kill(slot, Status.CANCELED, "Canceled",
                           "canceled; the handler did not stop and was killed")

    def _kill(self, slot: Slot, target: Status, error_type: str, message: str) -> None:
        head, waiting = slot.take_back()
        assert head is not None
        run = head.run
        self.buffer.extendleft(reversed(waiting))  # never started: another executor takes them
        slot.kill()
        self.processed += 1
        store.end_killed_run(run.pk, target, error_type, message)
        logger.warning("Run %s: %s", run.pk, message)

    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()
