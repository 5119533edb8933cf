"""The supervisor: starts executor processes and keeps the fleet honest.

Executors claim, execute and write outcomes themselves (see :mod:`.runloop`); the
supervisor keeps the worker's heartbeat, rescues runs of lost workers, ticks cron
schedules, wakes idle executors when runs arrive, kills an executor whose run passed
its time limit or ignored a cancel, and finishes the work of an executor that died.

One loop, no threads: it waits on the executors' pipes and process sentinels and on the
PostgreSQL LISTEN socket, so a finished run or a new one wakes it at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any, TextIO

from django.db import DatabaseError, close_old_connections, router
from django.utils import timezone

from .. import conf, pauses, retention, store
from ..models import Run
from ..registry import registry
from ..states import Status
from .pool import Slot
from .runloop import REFUSED, write_one_by_one
from .wakeup import Listener

logger = logging.getLogger(__name__)


# Seconds between two reads of the executors' reports (see _sleep_handling_messages).
READ_INTERVAL = 0.01


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
        # Outcomes of executors that died before writing them (written by the supervisor).
        self.outcomes: list[store.Outcome] = []
        self.processed = 0
        self.serving = False
        self.draining = False
        self.exit_now = False
        self.listener = Listener(router.db_for_write(Run))
        spawn = multiprocessing.get_context("spawn")
        # Set when draining: executors claim nothing more and give back what they hold.
        self.stop_flag = spawn.Value("b", 0, lock=False)
        # --max-tasks, shared by the executors' claims (-1: no limit).
        self.claims_left = spawn.Value("q", -1 if max_tasks is None else max_tasks)
        self._drain_deadline: float | None = None
        self._next_heartbeat = 0.0
        self._next_cancel_poll = 0.0
        self._next_tick = 0.0
        self._next_poll = 0.0
        self._next_read = 0.0
        # The paused tasks and queues as last read; executors get every change.
        self.paused = pauses.NOTHING
        self._next_pause_read = 0.0
        self._next_limits_sweep = 0.0
        self._db_backoff = 0.0
        # When this worker's heartbeat last answered, and before when it judges no other
        # worker lost (see _may_rescue).
        self._heard_at: float | None = None
        self._rescue_after = 0.0
        # Claims (run id, updated_at) of this worker no executor accounted for at the
        # last check.
        self._unaccounted: set[tuple[int, Any]] = set()

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self._register()
        grace = conf.get("KILL_GRACE")
        self.slots = [Slot(i, self.id, grace, self.queues, self.stop_flag, self.claims_left)
                      for i in range(self.concurrency)]
        try:
            self._wait_ready()
            self.listener.open()
            self.serving = True
            self._wake_idle(None)  # all at once: no run starts before every executor is up
            self._say(f"tasks_worker ready: id={self.id} concurrency={self.concurrency} "
                      f"queues={','.join(self.queues or ['*'])}")
            if self.paused:
                self._say(f"paused: {self.paused.describe()}")
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
        self.paused = pauses.read()

    def _wait_ready(self) -> None:
        """Wait for every executor to start, heartbeating meanwhile: starting executors
        on a busy machine can outlast HEARTBEAT_TIMEOUT, and runs claimed right after
        must not belong to a worker that looks lost."""
        deadline = time.monotonic() + 60
        interval = conf.get("HEARTBEAT_INTERVAL")
        while True:
            store.heartbeat(self.id, 0)
            if all(slot.ready for slot in self.slots):
                return
            if time.monotonic() > deadline or self.exit_now:
                raise RuntimeError("Executor processes did not start in 60 s.")
            until = min(time.monotonic() + interval, deadline)
            while time.monotonic() < until and not all(slot.ready for slot in self.slots):
                self._sleep_handling_messages(min(1.0, interval))

    def _finished(self) -> bool:
        if self.exit_now:
            return True
        if not (self.draining or self._limit_reached()):
            return False
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            # Runs still executing are stopped and put back to pending, their attempts
            # not used up (_shutdown): a deploy never waits on a long run for long.
            self._say("drain bound reached: stopping the runs still executing")
            return True
        return not self.outcomes and all(slot.empty for slot in self.slots)

    def _limit_reached(self) -> bool:
        return self.max_tasks is not None and self.processed >= self.max_tasks

    def _shutdown(self) -> None:
        self.stop_flag.value = 1
        try:
            for slot in self.slots:  # after a second signal (or a crash) runs are left
                if slot.current is not None:
                    slot.kill()
                slot.stop()
                self._read_all(slot)
                self._take_over(slot, lambda run_id: store.release(
                    run_id, "WorkerStopped", "worker stopped before the run finished",
                    counts=False))
                slot.conn.close()
            # Runs an executor claimed in its last moments without telling us.
            store.requeue(sorted(store.active_claims(self.id)))
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
                self._drain()
                self._say("draining: finishing in-flight runs (signal again to stop now)")

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _drain(self) -> None:
        """Stop claiming; executors finish the run they are in (for at most DRAIN_TIMEOUT)
        and give back the rest."""
        self.draining = True
        self.stop_flag.value = 1
        bound = conf.get("DRAIN_TIMEOUT")
        if bound is not None:
            self._drain_deadline = time.monotonic() + bound

    # -- the loop ---------------------------------------------------------------

    def _iterate(self) -> None:
        try:
            self._housekeeping()
            self._write_outcomes()
            self._watch_long_runs()
            self._enforce_deadlines()
            if self.burst and not self.draining and self._idle_and_empty():
                self._drain()
                return
            if self._db_backoff:  # back from an outage: executors need not wait out theirs
                self._wake_idle(None)
            self._db_backoff = 0.0
        except DatabaseError as exc:
            # Capped at the heartbeat interval: one query per worker, and this worker is
            # back in the heartbeat table within an interval of the database's return.
            self._db_backoff = min(max(self._db_backoff * 2, 0.5),
                                   conf.get("HEARTBEAT_INTERVAL"))
            logger.warning("Database unavailable (%s); retrying in %.1fs", exc, self._db_backoff)
            close_old_connections()
            self.listener.close()
            self._sleep_handling_messages(self._db_backoff)
            return
        self._sleep_handling_messages(self._wait_timeout())

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + conf.get("HEARTBEAT_INTERVAL")
            store.heartbeat(self.id, self.processed)
            if self._may_rescue():
                for run in store.recover_lost_runs(conf.get("HEARTBEAT_TIMEOUT")):
                    logger.warning("Recovered run %s of lost worker (now %s)", run.pk,
                                   run.status)
                    self._wake_idle()
            self._requeue_unaccounted()
            retention.tick(self.id)  # returns at once; one worker of all prunes, in a thread
            if not self.listener.active:
                self.listener.open()
        if now >= self._next_cancel_poll and not all(slot.empty for slot in self.slots):
            self._next_cancel_poll = now + conf.get("CANCEL_POLL_INTERVAL")
            self._handle_cancels()
        if now >= self._next_tick and not self.draining:
            self._next_tick = now + 1.0
            from .. import schedules

            if schedules.tick():
                self._wake_idle()
        if now >= self._next_pause_read:
            self._next_pause_read = now + conf.get("PAUSE_REFRESH_INTERVAL")
            self._refresh_pauses()
        if now >= self._next_limits_sweep and not self.draining:
            self._next_limits_sweep = now + conf.get("LIMITS_SWEEP_INTERVAL")
            if store.sweep_limits():  # limited runs no transaction admitted (see admission)
                self._wake_idle()
        if now >= self._next_poll and not self.draining:
            # Runs that became due with no notification (SQLite, run_after, requeued
            # runs, LISTEN down): one cheap read for the worker, not one per executor.
            self._next_poll = now + self._poll_interval()
            if any(slot.idle for slot in self.slots) and store.has_due(self.queues, self.paused):
                self._wake_idle()

    def _refresh_pauses(self) -> None:
        """Re-read the pause set; executors are told of a change (before any wake-up,
        on the same pipe), and a resume wakes every idle one: its runs start at once."""
        paused = pauses.read()
        if paused == self.paused:
            return
        resumed = paused.resumed_since(self.paused)
        self.paused = paused
        self._say(f"paused: {paused.describe()}")
        for slot in self.slots:
            slot.tell(("paused", paused))
        if resumed:
            self._wake_idle(None)

    def _may_rescue(self) -> bool:
        """May this worker judge other workers lost by their heartbeats now? (Asked
        right after its own heartbeat was written.)

        A worker that could not reach the database for a while (an outage, a lock held
        on SQLite, a starved process) cannot tell a dead worker from one that was cut
        off too: every heartbeat went stale at once, and the others may not be back
        yet. After such a gap in its own heartbeats it first gives them one
        HEARTBEAT_TIMEOUT to write theirs, so a live worker's runs are never rescued
        (and run twice) because of an outage."""
        now = time.monotonic()
        if self._heard_at is not None and now - self._heard_at > 2 * conf.get(
                "HEARTBEAT_INTERVAL"):
            self._rescue_after = now + conf.get("HEARTBEAT_TIMEOUT")
            logger.warning("No heartbeat for %.1fs (database unreachable or busy); other "
                           "workers get %.0fs to write theirs before any is taken for lost",
                           now - self._heard_at, conf.get("HEARTBEAT_TIMEOUT"))
        self._heard_at = now
        return now >= self._rescue_after

    def _poll_interval(self) -> float:
        return conf.get("PG_POLL_INTERVAL" if self.listener.active else "POLL_INTERVAL")

    def _wake_idle(self, count: int | None = 1) -> None:
        """Wake ``count`` idle executors (None: all). One per notification or finding,
        not all: an executor whose claim comes back full wakes the next one (see
        _on_message), so a single new run does not send every executor of every worker
        to the database."""
        if self.draining:
            return
        for slot in self.slots:
            if count is not None and count <= 0:
                return
            if slot.wake() and count is not None:
                count -= 1

    def _write_outcomes(self) -> None:
        """Write the outcomes of executors that died before they could."""
        if not self.outcomes:
            return
        outcomes, self.outcomes = self.outcomes, []
        try:
            store.settle(outcomes, self.id, self.queues, 0)
        except REFUSED:  # refused, not an outage: see write_one_by_one
            write_one_by_one(outcomes, self.id)
        except DatabaseError:
            self.outcomes = outcomes + self.outcomes  # keep them for the next round
            raise

    def _requeue_unaccounted(self) -> None:
        """Runs this worker holds that no executor accounts for go back to pending.

        An executor that dies between committing a claim and reporting it leaves such
        runs behind. A live executor reports its claims within moments, so a claim is
        given back only when two checks a heartbeat apart both miss it: the same claim,
        not just the same run (a run released and claimed again in between is another
        claim, with another ``updated_at``)."""
        for slot in self.slots:
            self._read_all(slot)  # what executors reported up to now
        known = set().union(*(slot.known_run_ids() for slot in self.slots),
                            (o.run_id for o in self.outcomes))
        unaccounted = {claim for claim in store.active_claims(self.id).items()
                       if claim[0] not in known}
        lost, self._unaccounted = unaccounted & self._unaccounted, unaccounted - self._unaccounted
        if lost:
            run_ids = sorted(run_id for run_id, _ in lost)
            logger.warning("Runs %s were claimed by an executor that died; requeued", run_ids)
            store.requeue(run_ids)
            self._wake_idle()

    def _idle_and_empty(self) -> bool:
        if self.outcomes or not all(slot.empty and slot.starved for slot in self.slots):
            return False
        return not store.has_due(self.queues, self.paused)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        wake_at = [self._next_heartbeat, self._next_tick, self._next_poll]
        if self._drain_deadline is not None:
            wake_at.append(self._drain_deadline)
        if not all(slot.empty for slot in self.slots):
            wake_at.append(self._next_cancel_poll)
        window = conf.get("SHORT_RUN_WINDOW")
        for slot in self.slots:
            assignment, began = slot.executing()
            if assignment is not None and not assignment.escalated:
                wake_at.append(began + window)
            deadline = slot.deadline()
            if deadline is not None:
                wake_at.append(deadline)
        timeout = min(wake_at) - now
        if self.burst:
            timeout = min(timeout, conf.get("POLL_INTERVAL"))
        return max(0.0, timeout)

    def _sleep_handling_messages(self, timeout: float) -> None:
        waitables: list[Any] = [slot.process.sentinel for slot in self.slots]
        if self.listener.active:
            waitables.append(self.listener)
        # Executors report every run's end; reading the pipes at most every READ_INTERVAL
        # lets one wake-up take many reports (a wake-up per report cost a fifth of the
        # worker's CPU). Deaths and notifications still wake the loop at once.
        pause = self._next_read - time.monotonic()
        if pause > 0:
            timeout = min(timeout, pause)
        else:
            waitables += [slot.conn for slot in self.slots]
        try:
            ready = wait(waitables, timeout=timeout)
        except InterruptedError:
            return
        if any(slot.conn in ready for slot in self.slots):
            self._next_read = time.monotonic() + READ_INTERVAL
        for obj in ready:
            try:
                self._on_ready(obj)
            except DatabaseError as exc:
                # What could not be written now is found again: outcomes stay queued,
                # runs no executor accounts for are requeued by _requeue_unaccounted().
                logger.warning("Database unavailable while handling executors (%s)", exc)
                close_old_connections()
            except Exception:  # one bad report must not take the whole worker down
                logger.exception("Could not handle what an executor reported")

    def _on_ready(self, obj: Any) -> None:
        if obj is self.listener:
            notifications = self.listener.drain()
            if self.listener.pauses_changed:
                self.listener.pauses_changed = False
                self._next_pause_read = 0.0  # re-read on this iteration's housekeeping
            if notifications:
                self._wake_idle(notifications)
            return
        slot = next((s for s in self.slots if obj in (s.conn, s.process.sentinel)), None)
        if slot is None:
            return
        if obj is slot.conn:
            self._read_all(slot)
        elif not slot.process.is_alive():
            self._read_all(slot)  # what it said before it died comes first
            self._on_executor_death(slot)

    def _read_all(self, slot: Slot) -> None:
        try:
            while slot.conn.poll():
                message = slot.receive()
                if message is None:  # closed: its sentinel reports the death
                    return
                self._on_message(slot, message)
        except OSError:  # closed already
            pass

    # -- executor events --------------------------------------------------------

    def _on_message(self, slot: Slot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "settled":
            claimed, wanted = message[1], message[2]
            slot.settled(claimed, wanted)
            if wanted and len(claimed) >= wanted:
                self._wake_idle()  # its claim came back full: probably more are due
        elif kind == "done":
            outcome = store.Outcome(*message[1:]) if len(message) > 2 else None
            slot.finished(message[1], outcome)
            self.processed += 1
        elif kind == "error":
            logger.error("Executor failed on run %s: %s", message[1], message[2])
            slot.finished(message[1], None)
            store.release(message[1], "ExecutorError", message[2])
            self.processed += 1
        elif kind == "requeued":
            slot.requeued(message[1])
        elif kind == "ready":
            slot.ready = True
            if self.paused:  # a new executor starts with nothing paused
                slot.tell(("paused", self.paused))
            if self.serving and not self.draining:  # replaces one that died: put it to work
                slot.wake()

    def _on_executor_death(self, slot: Slot) -> None:
        code = slot.process.exitcode
        head = slot.current
        if head is not None:
            logger.error("Executor died (exit %s) while running run %s", code, head.run_id)
            self.processed += 1
        self._take_over(slot, lambda run_id: store.release(
            run_id, "ExecutorDied", f"executor process exited with code {code}"))
        slot.restart()

    def _take_over(self, slot: Slot, end_head: Callable[[int], object]) -> None:
        """Finish what a stopped executor held: its outcomes are written, the run it was
        executing is ended by ``end_head``, the runs it never began go back to pending."""
        head, waiting, outcomes = slot.take_back()
        self.outcomes += outcomes
        self._write_outcomes()
        if head is not None:
            end_head(head.run_id)
        if waiting:
            store.requeue(waiting)
            self._wake_idle()

    def _watch_long_runs(self) -> None:
        """A run that outlives SHORT_RUN_WINDOW: its executor's finished outcomes are
        written now (a kill must not lose them), the run is recorded as running (its
        handler began: losing the worker now costs an attempt), and the runs claimed
        behind it go back to pending for idle executors of any worker."""
        now = time.monotonic()
        window = conf.get("SHORT_RUN_WINDOW")
        for slot in self.slots:
            assignment, began = slot.executing()
            if assignment is None or assignment.escalated or now - began < window:
                continue
            self._read_all(slot)  # it may have ended meanwhile
            if slot.executing()[0] is not assignment:
                continue
            self.outcomes += slot.take_unsettled()
            self._write_outcomes()
            wall = timezone.now() - dt.timedelta(seconds=now - began)
            store.begin_runs(self.id, {assignment.run_id: wall})
            assignment.escalated = True
            waiting = slot.withdraw()
            if waiting:
                store.requeue(waiting, worker_id=self.id)
                self._wake_idle(len(waiting))

    def _handle_cancels(self) -> None:
        """Cancel requests of this worker's runs: a run not begun yet is taken back and
        canceled without running its handler; an executing one is killed KILL_GRACE after
        the request unless it stops by itself."""
        requested = store.cancel_requested(self.id)
        if not requested:
            return
        grace = conf.get("KILL_GRACE")
        for slot in self.slots:
            self._read_all(slot)
            for run_id in slot.withdraw(set(requested)):
                store.cancel_unstarted(run_id, self.id)
            assignment = slot.current
            if assignment is not None and assignment.run_id in requested:
                asked = requested[assignment.run_id] or timezone.now()
                waited = (timezone.now() - asked).total_seconds()
                assignment.kill_at = time.monotonic() + max(0.0, grace - waited)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            assignment, deadline = slot.current, slot.deadline()
            if assignment is None or deadline is None or now < deadline:
                continue
            if assignment.kill_at is not None and now >= assignment.kill_at:
                self._kill(slot, Status.CANCELED, "Canceled",
                           "canceled; the handler did not stop and was killed")
            else:
                self._kill(slot, Status.TIMED_OUT, "TaskTimeout",
                           "time limit exceeded; the handler did not stop and was killed")

    def _kill(self, slot: Slot, target: Status, error_type: str, message: str) -> None:
        """Kill the executor of the run at the head of ``slot``, which ends as ``target``."""
        doomed = slot.current.run_id if slot.current else None
        slot.kill()
        self._read_all(slot)  # outcomes and claims it reported before it died

        def end_head(run_id: int) -> None:
            self.processed += 1
            if run_id == doomed:
                store.end_killed_run(run_id, target, error_type, message)
                logger.warning("Run %s: %s", run_id, message)
            else:  # the doomed run ended just before the kill; this one had only begun
                store.release(run_id, "WorkerStopped", "its executor was replaced", counts=False)

        try:
            self._take_over(slot, end_head)
        finally:
            slot.restart()

    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()
