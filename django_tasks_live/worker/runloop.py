"""An executor's loop: claim runs, execute them one at a time, write their outcomes.

Every executor settles for itself (the outcomes of its last batch and its next claim,
in one transaction, on its own connection), so a wide worker's database work is spread
over its processes instead of queueing behind one loop; the supervisor only watches.
Each outcome is also reported to the supervisor as its run ends, so that if this
process dies or is killed before writing it, the supervisor writes it instead (the
UPDATE's guard makes a second write of an outcome a no-op).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connections

from .. import conf, store
from ..models import Run
from ..runner import effective_timeout, execute, resolve
from ..states import Status

logger = logging.getLogger(__name__)

IDLE_WAIT = 1.0  # seconds an idle loop waits for a message before it looks again
IDLE_RECHECK = 5.0  # seconds of a silent connection after which it is re-checked
# How much work an executor claims at once: enough that a claim's commit is shared by
# many short runs, little enough that long runs are not hoarded.
PIPELINE_SECONDS = 0.02


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
    From the supervisor: ``"wake"`` (runs may be due) and ``None`` (stop).
    """

    def __init__(
        self,
        conn: Connection,
        worker_id: str,
        queues: Sequence[str] | None,
        stop_flag: Any,
        claims_left: Any,
        using: str,
    ) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.queues = list(queues) if queues else None
        self.stop_flag = stop_flag  # set when the worker drains: claim nothing more
        self.claims_left = claims_left  # shared by the executors: --max-tasks (-1: no limit)
        self.using = using
        self.queue: deque[Run] = deque()  # claimed here, not yet begun
        self.outcomes: list[store.Outcome] = []  # ended here, not yet written
        # Claim when idle, else wait for a wake-up or the next poll. The supervisor wakes
        # every executor once all are up (so no run starts before it watches).
        self.hungry = False
        self.stopped = False
        self.avg_run_seconds = PIPELINE_SECONDS  # moving average of how long runs take
        self._backoff = 0.0
        self._last_used = time.monotonic()  # when the connection last answered

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self.stopped:
            self.step()
        if self.outcomes:  # asked to stop: write what ended here (else the supervisor will)
            self._settle(0)

    def step(self) -> None:
        """Run the next queued run, or settle and claim, or wait for work."""
        self._read_messages(0)
        if self.stopped:
            return
        if self.stop_flag.value and self.queue:
            self._give_back_queue()
        if self.queue:
            self._run(self.queue.popleft())
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
        try:
            _, claimed = store.settle(outcomes, self.worker_id, self.queues, taken)
        except (DataError, IntegrityError) as exc:
            # Not an outage: retrying the same batch would fail forever and wedge the
            # worker. Write the outcomes one by one; a refused one fails its run.
            self._return_claims(taken)
            logger.error("A batch of outcomes was refused (%s); writing them one by one", exc)
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
        self.queue.extend(claimed)
        if taken:
            self.hungry = bool(claimed)  # none due: wait for a wake-up or the next poll
        self.send(("settled", [(run.pk, timeout_of(run)) for run in claimed], taken))

    def _database_unavailable(self, exc: Exception) -> None:
        self._backoff = min(max(self._backoff * 2, 0.5), 10.0)
        logger.warning("Database unavailable (%s); retrying in %.1fs", exc, self._backoff)
        close_old_connections()
        self.hungry = True  # try again after the back-off

    def _give_back_queue(self) -> None:
        """Draining: runs claimed here but not begun go back to pending for other
        workers (the attempt is not counted)."""
        ids = [run.pk for run in self.queue]
        try:
            store.requeue(ids)
        except DatabaseError as exc:
            self._database_unavailable(exc)
            return  # still ours: try again on the next step
        self.queue.clear()
        self.send(("requeued", ids))

    # -- executing --------------------------------------------------------------

    def _run(self, run: Run) -> None:
        if time.monotonic() - self._last_used > IDLE_RECHECK:
            # Keep the connection across runs (reconnecting costs more than a no-op run),
            # but after a pause make sure it survived (the database may have restarted).
            close_unusable_connection()
        outcome: list[Any] = []
        started = time.monotonic()

        def record(run: Run, target: Status, fields: dict[str, Any]) -> Run:
            # Written with this executor's next settle (one commit for many runs).
            outcome[:] = [target, fields]
            for name, value in fields.items():
                setattr(run, name, value)
            run.status = target
            return run

        try:
            execute(run.pk, self.worker_id, run=run, record=record)
        except Exception as exc:  # execute() records handler errors; this is our own failure
            self.send(("error", run.pk, f"{type(exc).__name__}: {exc}"))
            return
        took = time.monotonic() - started
        self.avg_run_seconds += 0.2 * (took - self.avg_run_seconds)
        if outcome:
            target, fields = outcome
            self.outcomes.append(store.Outcome(run.pk, target, fields, run=run))
            self.send(("done", run.pk, target, fields))
        else:  # not ours any more (ended elsewhere): nothing to write
            self.send(("done", run.pk))

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the supervisor is gone; PDEATHSIG ends this process
            self.stopped = True


def write_one_by_one(outcomes: Sequence[store.Outcome], worker_id: str) -> None:
    """Write ``outcomes`` separately; one the database refuses fails its run."""
    for outcome in outcomes:
        try:
            store.settle([outcome], worker_id, None, 0)
        except (DataError, IntegrityError) as exc:
            logger.error("Run %s: its outcome could not be stored: %s", outcome.run_id, exc)
            store.end_killed_run(outcome.run_id, Status.FAILED, "OutcomeNotStored",
                                 f"the run's outcome could not be stored: {exc}"[:2000])
