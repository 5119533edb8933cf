"""An executor's loop: claim runs, execute them one at a time, write their outcomes.

Every executor settles for itself (the outcomes of its last batch and its next claim,
in one transaction, on its own connection), so a wide worker's database work is spread
over its processes instead of queueing behind one loop; the supervisor only watches.
Each outcome is also reported to the supervisor as its run ends, so that if this
process dies or is killed before writing it, the supervisor writes it instead (the
UPDATE's guard makes a second write of an outcome a no-op).

Claimed runs are ``claimed`` until their handlers begin. Beginning one costs no write:
the executor notes it in the *gate* it shares with the supervisor (the sequence number
of the claim it began, and when), under the gate's lock. The supervisor reads the gate
to know exactly which run is executing; a run that outlives SHORT_RUN_WINDOW is then
recorded as running by the supervisor, which also takes back the runs queued behind it
(``("withdraw", ids)``, sent while it holds the gate's lock, so the executor reads it
before it can begin any of them).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connections
from django.utils import timezone

from .. import conf, pauses, store
from ..jsonvalues import safe_str
from ..models import Run
from ..runner import effective_timeout, execute, resolve
from ..states import Status

logger = logging.getLogger(__name__)

IDLE_WAIT = 1.0  # seconds an idle loop waits for a message before it looks again
IDLE_RECHECK = 5.0  # seconds of a silent connection after which it is re-checked
# How much work an executor claims at once: enough that a claim's commit is shared by
# many short runs, little enough that long runs are not hoarded.
PIPELINE_SECONDS = 0.02
# Outcomes held longer than this are written before the next run begins.
OUTCOME_DELAY = 0.05


def new_gate() -> Any:
    """The executor's gate: [sequence number of the claim it began last, when
    (time.monotonic(), one clock for all processes on the machine)], with a lock."""
    return multiprocessing.get_context("spawn").Array("d", 2)


@dataclass
class Claim:
    """A run this executor claimed and has not begun."""

    seq: int  # 1-based position among this executor's claims (the supervisor counts too)
    at: float  # time.monotonic() of the claim
    run: Run


def close_unusable_connection() -> None:
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.is_usable():
            connection.close()


def timeout_of(run: Run) -> float | None:
    """The run's time limit, which the supervisor enforces with a kill."""
    try:
        return effective_timeout(run, resolve(run))
    except Exception:  # unknown task: execute() records the failure at once
        return effective_timeout(run, None)


class RunLoop:
    """The loop of one executor process (tests drive it in-process).

    Messages to the supervisor, in the order things happen:
    ``("settled", [(run id, timeout), ...], wanted)`` after each commit of a settle
    (every outcome sent before it is written; these runs are now queued here, in
    order, of the ``wanted`` it asked for),
    ``("done", run id, target, fields)`` when a run ends (its outcome),
    ``("error", run id, message)`` when executing failed outside the handler,
    ``("requeued", [run id, ...])`` when draining gave queued runs back.
    From the supervisor: ``"wake"`` (runs may be due), ``("paused", PauseSet)`` (what
    claims skip from now on) and ``None`` (stop).
    """

    def __init__(
        self,
        conn: Connection,
        worker_id: str,
        queues: Sequence[str] | None,
        stop_flag: Any,
        claims_left: Any,
        using: str,
        gate: Any = None,
    ) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.queues = list(queues) if queues else None
        self.stop_flag = stop_flag  # set when the worker drains: claim nothing more
        self.claims_left = claims_left  # shared by the executors: --max-tasks (-1: no limit)
        self.using = using
        self.gate = gate if gate is not None else new_gate()
        self.claims = 0  # claimed here since the process started (the last Claim.seq)
        self.queue: deque[Claim] = deque()  # claimed here, not yet begun
        self.paused = pauses.NOTHING  # as the supervisor last said
        self.outcomes: list[store.Outcome] = []  # ended here, not yet written
        self._outcomes_since = 0.0  # when the oldest of them ended
        # Claim when idle, else wait for a wake-up or the next poll. The supervisor wakes
        # every executor once all are up (so no run starts before it watches).
        self.hungry = False
        self.stopped = False
        self.avg_run_seconds = PIPELINE_SECONDS  # moving average of how long runs take
        self.task_seconds: dict[str, float] = {}  # the same per task
        self._backoff = 0.0
        self._retry_at = 0.0  # after a failed write, when to try the next one
        self._last_used = time.monotonic()  # when the connection last answered

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self.stopped:
            self.step()
        if self.outcomes:  # asked to stop: write what ended here (else the supervisor will)
            self._settle(0)

    def step(self) -> None:
        """Run the next queued run, or settle and claim, or wait for work."""
        if not self.queue:  # else _begin_next() reads the messages (one poll per run)
            self._read_messages(0)
            if self.stopped:
                return
        elif self.stop_flag.value:
            self._give_back_queue()
        if self.queue:
            if self.outcomes and self._outcomes_due(self.queue[0].run):
                self._settle(0)  # a kill or a long run must not hold back finished results
            claim = self._begin_next()
            if claim is not None:
                self._run(claim)
            return
        limit = self._claim_limit() if self.hungry else 0
        if self.outcomes or limit:
            self._settle(limit)
        if not self.queue:
            self._wait_for_work()

    def _read_messages(self, timeout: float) -> bool:
        """Take the supervisor's messages; True if any arrived within ``timeout``."""
        try:
            if not self.conn.poll(timeout):
                return False
            while True:
                message = self.conn.recv()
                if message is None:
                    self.stopped = True
                elif message == "wake":
                    self.hungry = True
                elif message[0] == "paused":
                    self.paused = message[1]
                elif message[0] == "withdraw":  # the supervisor took these back
                    gone = set(message[1])
                    self.queue = deque(c for c in self.queue if c.run.pk not in gone)
                if not self.conn.poll():
                    return True
        except (EOFError, OSError):  # the supervisor is gone
            self.stopped = True
            return True

    def _wait_for_work(self) -> None:
        """Idle: wait for the supervisor's wake-up (it listens for new runs and polls for
        due ones, once for all its executors), or for the end of a back-off."""
        self._read_messages(self._backoff or IDLE_WAIT)

    # -- claiming and writing ---------------------------------------------------

    def _depth(self) -> int:
        """Runs to claim at once: about PIPELINE_SECONDS of work (short runs share a
        commit, long ones are not hoarded), at least one."""
        wanted = int(PIPELINE_SECONDS / max(self.avg_run_seconds, 1e-4))
        return 1 + max(0, min(wanted, conf.get("PREFETCH")))

    def _outcomes_due(self, next_run: Run) -> bool:
        """Write the held outcomes before ``next_run`` begins? When they have waited
        OUTCOME_DELAY, or when ``next_run`` is not known to be short (it may run long)."""
        now = time.monotonic()
        if now < self._retry_at:
            return False  # the database is away; the supervisor holds them too
        if now - self._outcomes_since >= OUTCOME_DELAY:
            return True
        took = self.task_seconds.get(next_run.task_name)
        return took is None or took >= conf.get("SHORT_RUN_WINDOW") / 4

    def _claim_limit(self) -> int:
        if self.stop_flag.value:
            return 0
        return max(0, min(self._depth() - len(self.queue), conf.get("CLAIM_BATCH")))

    def _take_claims(self, limit: int) -> int:
        """Reserve up to ``limit`` claims of the worker's --max-tasks."""
        with self.claims_left.get_lock():
            left = self.claims_left.value
            if left < 0:
                return limit
            taken = min(limit, left)
            self.claims_left.value = left - taken
            return taken

    def _return_claims(self, count: int) -> None:
        if count > 0:
            with self.claims_left.get_lock():
                if self.claims_left.value >= 0:
                    self.claims_left.value += count

    def _settle(self, limit: int) -> None:
        """Write the outcomes and claim up to ``limit`` runs, in one transaction."""
        taken = self._take_claims(limit) if limit else 0
        if limit and not taken:
            self.hungry = False  # --max-tasks reached: the worker stops when in-flight runs end
        if not (self.outcomes or taken):
            return
        outcomes, self.outcomes = self.outcomes, []
        now = time.monotonic()
        try:
            _, claimed = store.settle(outcomes, self.worker_id, self.queues, taken,
                                      paused=self.paused)
        except REFUSED as exc:
            # Not an outage: retrying the same batch would fail forever and wedge the
            # worker. Write the outcomes one by one; a refused one fails its run.
            self._return_claims(taken)
            logger.error("A batch of outcomes was refused (%s); writing them one by one",
                         safe_str(exc))
            write_one_by_one(outcomes, self.worker_id)
            self.send(("settled", [], 0))
            return
        except DatabaseError as exc:
            self._return_claims(taken)
            self.outcomes = outcomes + self.outcomes  # keep them for the next try
            self._database_unavailable(exc)
            return
        self._backoff = 0.0
        self._last_used = time.monotonic()  # a claim just answered: no re-check before its run
        self._return_claims(taken - len(claimed))
        for run in claimed:
            self.claims += 1
            self.queue.append(Claim(self.claims, now, run))
        if taken:
            self.hungry = bool(claimed)  # none due: wait for a wake-up or the next poll
        self.send(("settled", [(run.pk, timeout_of(run)) for run in claimed], taken))

    def _database_unavailable(self, exc: Exception) -> None:
        self._backoff = min(max(self._backoff * 2, 0.5), 10.0)
        self._retry_at = time.monotonic() + self._backoff
        logger.warning("Database unavailable (%s); retrying in %.1fs", exc, self._backoff)
        close_old_connections()
        self.hungry = True  # try again after the back-off

    def _give_back_queue(self) -> None:
        """Draining: runs claimed here but not begun go back to pending for other
        workers (the attempt is not counted)."""
        ids = [claim.run.pk for claim in self.queue]
        try:
            store.requeue(ids, worker_id=self.worker_id)
        except DatabaseError as exc:
            self._database_unavailable(exc)
            return  # still ours: try again on the next step
        self.queue.clear()
        self.send(("requeued", ids))

    # -- executing --------------------------------------------------------------

    def _begin_next(self) -> Claim | None:
        """Take the next claim to execute, noting it in the gate. Under the gate's lock,
        after reading the supervisor's messages: a withdrawal it sent while holding the
        lock is seen here, so a withdrawn run is never begun."""
        lock = self.gate.get_lock()
        with lock:
            self._read_messages(0)
            if self.stopped or not self.queue:
                return None
            claim = self.queue.popleft()
            gate = self.gate.get_obj()
            gate[1] = time.monotonic()  # when first: the supervisor reads the sequence first
            gate[0] = claim.seq
        return claim

    def _run(self, claim: Claim) -> None:
        if time.monotonic() - self._last_used > IDLE_RECHECK:
            # Keep the connection across runs (reconnecting costs more than a no-op run),
            # but after a pause make sure it survived (the database may have restarted).
            close_unusable_connection()
        run = claim.run
        outcome: list[Any] = []
        started = time.monotonic()
        began = timezone.now() if run.started_at is None else None

        def record(run: Run, target: Status, fields: dict[str, Any]) -> Run:
            # Written with this executor's next settle (one commit for many runs).
            if began is not None:
                fields = {**fields, "started_at": began}
            outcome[:] = [target, fields]
            for name, value in fields.items():
                setattr(run, name, value)
            run.status = target
            return run

        try:
            execute(run.pk, self.worker_id, run=run, record=record)
        except Exception as exc:  # execute() records handler errors; this is our own failure
            self.send(("error", run.pk, f"{type(exc).__name__}: {safe_str(exc)}"))
            return
        took = time.monotonic() - started
        self.avg_run_seconds += 0.2 * (took - self.avg_run_seconds)
        known = self.task_seconds.get(run.task_name, took)
        self.task_seconds[run.task_name] = known + 0.2 * (took - known)
        if outcome:
            target, fields = outcome
            if not self.outcomes:
                self._outcomes_since = time.monotonic()
            self.outcomes.append(store.Outcome(run.pk, target, fields, run=run))
            self.send(("done", run.pk, target, fields))
        else:  # not ours any more (ended elsewhere): nothing to write
            self.send(("done", run.pk))

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the supervisor is gone; PDEATHSIG ends this process
            self.stopped = True


# Refused for good, not an outage: by the database, or before it (text UTF-8 cannot
# encode, JSON too deep to encode). The same write fails again if retried.
REFUSED = (DataError, IntegrityError, ValueError, RecursionError)


def write_one_by_one(outcomes: Sequence[store.Outcome], worker_id: str) -> None:
    """Write ``outcomes`` separately; one the database refuses fails its run."""
    for outcome in outcomes:
        try:
            store.settle([outcome], worker_id, None, 0)
        except REFUSED as exc:
            logger.error("Run %s: its outcome could not be stored: %s", outcome.run_id, exc)
            store.end_killed_run(outcome.run_id, Status.FAILED, "OutcomeNotStored",
                                 refusal_reason(exc))


def refusal_reason(exc: BaseException) -> str:
    """What run.error says about a refused write: the error's kind and first line, not
    the SQL, parameters or failing row the database adds (the worker log has those)."""
    first = safe_str(exc).strip().splitlines()[:1]
    detail = f": {first[0][:200]}" if first else ""
    return (f"the run's outcome could not be stored ({type(exc).__name__}{detail}); "
            "the worker log has the details.")
