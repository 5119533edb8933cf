"""The run lifecycle: one status enum and the table of legal moves."""

from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retrying"
    CANCEL_REQUESTED = "cancel_requested", "Cancel requested"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    TIMED_OUT = "timed_out", "Timed out"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT})
# Statuses a worker may claim (``retrying`` once its ``run_after`` has passed).
CLAIMABLE = frozenset({Status.PENDING, Status.RETRYING})
# Statuses in which a handler is executing somewhere.
ACTIVE = frozenset({Status.RUNNING, Status.CANCEL_REQUESTED})

# to-status -> statuses it may be reached from.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCEL_REQUESTED}),  # recovery, requeue
    Status.RUNNING: frozenset(CLAIMABLE),
    Status.RETRYING: frozenset({Status.RUNNING}),
    Status.CANCEL_REQUESTED: frozenset({Status.RUNNING}),
    Status.COMPLETED: frozenset(ACTIVE),
    Status.FAILED: frozenset(ACTIVE | CLAIMABLE),  # CLAIMABLE: unknown handler found at claim
    Status.TIMED_OUT: frozenset(ACTIVE),
    Status.CANCELED: frozenset(CLAIMABLE | ACTIVE),
}
assert set(ALLOWED_FROM) == set(Status)


class IllegalTransition(ValueError):
    """A status change that the lifecycle does not allow (e.g. completed -> running)."""

    def __init__(self, run_id: int, current: str, target: str) -> None:
        # str(): a Status member would show as "Status.COMPLETED" in the message.
        self.run_id, self.current, self.target = run_id, str(current), str(target)
        super().__init__(f"Run {run_id} cannot move from {self.current!r} to {self.target!r}.")


def can_move(current: str, target: str) -> bool:
    return current in ALLOWED_FROM[Status(target)]


def outcome_status(current: str, target: Status) -> Status:
    """Where an attempt's outcome really takes a run: a failed attempt of a run whose
    cancel was requested is not retried (``retrying`` is only reachable from running,
    so the outcome would be refused and the run left hanging): it ends canceled."""
    if target == Status.RETRYING and current == Status.CANCEL_REQUESTED:
        return Status.CANCELED
    return target


# Mapping onto django.tasks' TaskResultStatus names (READY/RUNNING/SUCCESSFUL/FAILED).
DJANGO_STATUS = {
    Status.PENDING: "READY",
    Status.RETRYING: "READY",
    Status.RUNNING: "RUNNING",
    Status.CANCEL_REQUESTED: "RUNNING",
    Status.COMPLETED: "SUCCESSFUL",
    Status.FAILED: "FAILED",
    Status.CANCELED: "FAILED",
    Status.TIMED_OUT: "FAILED",
}
