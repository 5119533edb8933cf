"""django-q2 as the engine: ``manage.py qcluster`` executes this app's runs.

A run is handed over as ``async_task("django_tasks_live.executors.django_q.run", run_id)``
when its transaction commits: only the id travels (django-q2 pickles and signs its
packages; nothing of the run's arguments is in them). :func:`run` claims that very run
(a guarded UPDATE: a run that is finished, canceled, not due or running elsewhere is
left alone, so a redelivered hand-over never executes a run twice) and executes it with
:func:`runner.execute`, the same lifecycle as the built-in worker.

Each django-q2 worker process is a worker of this app (a ``Worker`` row, id
``djq-<host>-<pid>-<hex>``) with one guard thread that:

- heartbeats the row, so runs of a SIGKILLed cluster are rescued by the usual rule
  (``recover_lost_runs``: a silent worker's runs go back to pending or fail);
- ends the run it executes when its time limit plus ``KILL_GRACE`` has passed, or
  ``KILL_GRACE`` after an unheeded cancel: it records ``timed_out``/``canceled`` and
  SIGKILLs its own process (django-q2's sentinel starts a new worker); cooperative
  handlers stop earlier through ``ctx.check()``;
- sweeps: hands over waiting runs (not of paused tasks or queues: a run handed over
  before its pause is given back by :func:`run`) that were never handed over since they last changed
  (a failed hand-over, a retry whose backoff passed, a rescued run) or whose hand-over
  is older than ``HANDOVER_RETRY`` s and never began (a broker that lost it);
- rescues runs of lost workers and ticks cron schedules (one run per fire time however
  many processes tick, as with built-in workers).

django-q2's own time limit is switched off per hand-over (``timeout=-1``): its SIGALRM
raises ``SystemExit`` inside the handler, which would end the process with the run
still marked running. Results are not saved by django-q2 (``save=False``): the run is
the one truth.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from .. import conf, events, pauses, runner, schedules, store
from ..registry import UnknownTask
from ..states import Status
from . import DJANGO_Q

logger = logging.getLogger(__name__)

RUNNER = "django_tasks_live.executors.django_q.run"
# Runs handed over per sweep at most, and how often the guard thread looks around.
SWEEP_LIMIT = 500
GUARD_INTERVAL = 0.5
# A run's pushes to the channel layer (its outcome, progress, runs it starts) wait up to
# this long, so that a busy process sends one layer message per PUSH_HOLD instead of
# one per event (a group_send costs ~0.5 ms of CPU); streams batch per SSE_BATCH_WINDOW
# (50 ms) anyway. The events themselves are committed at once.
PUSH_HOLD = 0.02


# ---------------------------------------------------------------- handing over


def hand_over(run_ids: Sequence[int]) -> list[int]:
    """Give runs to django-q2; returns the ids it accepted. When the broker refuses
    (down, unreachable) the rest stay pending and the next sweep tries again."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {"timeout": -1, "save": False}
    cluster = conf.get("DJANGO_Q_CLUSTER")
    if cluster:
        options["cluster"] = cluster
    done: list[int] = []
    for index, run_id in enumerate(run_ids):
        try:
            async_task(RUNNER, run_id, q_options={**options, "task_name": f"tasks_live-{run_id}"})
        except Exception as exc:  # each broker client raises its own errors
            logger.warning("Runs %s not handed to django-q2 yet (%s); the sweeper retries",
                           list(run_ids[index:]), exc)
            _forget_hand_over(run_ids[index:])
            break
        done.append(run_id)
    return done


def _forget_hand_over(run_ids: Sequence[int]) -> None:
    try:
        store.clear_hand_overs(run_ids)
    except DatabaseError:  # the database is down too: HANDOVER_RETRY's age rule finds them
        pass


def sweep() -> list[int]:
    """Hand over the waiting runs that need it (see the module docstring)."""
    store.sweep_limits()  # limited runs no transaction admitted (see admission)
    run_ids = store.take_hand_overs(DJANGO_Q, conf.get("HANDOVER_RETRY"), SWEEP_LIMIT,
                                    paused=pauses.current())
    return hand_over(run_ids) if run_ids else []


# ---------------------------------------------------------------- executing


def run(run_id: int) -> str | None:
    """The django-q2 task: claim run ``run_id`` and execute it; returns its new status
    (None: it was not this process's to run)."""
    process = current_process()
    paused = pauses.current()
    # The claim's event is pushed with the outcome's unless the handler outlives
    # SHORT_RUN_WINDOW (as the built-in worker writes no "running" for short runs).
    with events.holding(conf.get("SHORT_RUN_WINDOW")):
        claimed = store.claim_run(int(run_id), process.id, paused=paused)
    if claimed is None:
        if paused:  # perhaps held back by a pause: the sweeper hands it over once resumed
            store.clear_hand_overs([int(run_id)])
        return None
    try:
        timeout = runner.effective_timeout(claimed, runner.resolve(claimed))
    except UnknownTask:
        timeout = None  # execute() fails it at once
    grace = conf.get("KILL_GRACE")
    with process.lock:
        process.current = Current(claimed.pk, time.monotonic() + timeout + grace
                                  if timeout else None)
    try:
        with events.holding(PUSH_HOLD):
            finished = runner.execute(claimed.pk, process.id, run=claimed,
                                      record=runner.record_as_claimer)
    except Exception as exc:  # a bug, not the handler's error (execute() records those)
        logger.exception("Run %s: the executor failed", claimed.pk)
        store.release(claimed.pk, "ExecutorError", str(exc))
        return None
    finally:
        with process.lock:
            process.current = None
            process.processed += 1
    return finished.status if finished else None


@dataclass(frozen=True)
class Current:
    run_id: int
    deadline: float | None  # time.monotonic() when it is killed


class Process:
    """This django-q2 worker process as a worker of this app."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.id = f"djq-{socket.gethostname()[:60]}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.lock = threading.Lock()
        self.current: Current | None = None
        self.processed = 0
        self._next_heartbeat = self._next_tick = 0.0
        store.register_worker(self.id, socket.gethostname(), self.pid, [], 1)
        # A django-q2 worker leaves through os._exit (multiprocessing): atexit would not
        # send the pushes still held.
        multiprocessing.util.Finalize(self, events.pusher.flush, exitpriority=10)
        self.thread = threading.Thread(target=self._guard, name="tasks-live-djq", daemon=True)
        self.thread.start()

    def _guard(self) -> None:
        backoff = GUARD_INTERVAL
        while True:
            try:
                self.look_around()
                backoff = GUARD_INTERVAL
            except DatabaseError as exc:
                backoff = min(backoff * 2, 10.0)
                logger.warning("django-q2 guard: database unavailable (%s)", exc)
                connections.close_all()  # this thread's connections only
            except Exception:
                logger.exception("django-q2 guard failed; it goes on")
            time.sleep(backoff)

    def look_around(self) -> None:
        """One round of the guard thread: heartbeat, limits, rescue, sweep, schedules."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + conf.get("HEARTBEAT_INTERVAL")
            store.heartbeat(self.id, self.processed)
            for lost in store.recover_lost_runs(conf.get("HEARTBEAT_TIMEOUT")):
                logger.warning("Recovered run %s of a lost worker (now %s)", lost.pk, lost.status)
        self.enforce_limits()
        sweep()
        if now >= self._next_tick:
            self._next_tick = now + 1.0  # as often as built-in workers tick
            schedules.tick()

    def enforce_limits(self) -> None:
        """Kill this process if its run passed its time limit or ignored a cancel."""
        with self.lock:  # held to the kill: the main thread cannot begin another run
            current = self.current
            if current is None:
                return
            if current.deadline is not None and time.monotonic() >= current.deadline:
                self._kill(current.run_id, Status.TIMED_OUT, "TaskTimeout",
                           "time limit exceeded; the handler did not stop and was killed")
                return
            asked = store.cancel_requested(self.id).get(current.run_id)
            if asked is not None and time.time() - asked.timestamp() >= conf.get("KILL_GRACE"):
                self._kill(current.run_id, Status.CANCELED, "Canceled",
                           "canceled; the handler did not stop and was killed")

    def _kill(self, run_id: int, target: Status, error_type: str, message: str) -> None:
        if store.end_killed_run(run_id, target, error_type, message) is None:
            return  # it ended by itself meanwhile
        logger.warning("Run %s: %s (django-q2 worker %s)", run_id, message, self.pid)
        store.stop_worker(self.id)
        events.pusher.flush()
        os.kill(self.pid, signal.SIGKILL)  # django-q2's sentinel starts a new worker


_processes: dict[int, Process] = {}
_start_lock = threading.Lock()


def current_process() -> Process:
    """This process's worker (created on first use; a forked child makes its own)."""
    pid = os.getpid()
    process = _processes.get(pid)
    if process is None:
        with _start_lock:
            process = _processes.get(pid)
            if process is None:
                process = _processes[pid] = Process()
    return process


def on_worker_spawn(sender: Any = None, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2's ``post_spawn`` (sent by each new worker process): start its guard at
    once, so an idle cluster sweeps, rescues and ticks schedules too."""
    try:
        current_process()
    except DatabaseError as exc:  # the first run retries
        logger.warning("django-q2 worker %s: cannot register yet (%s)", proc_name, exc)
