"""The run lifecycle: one status enum and the table of legal moves."""

from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    # Claimed ahead by a worker, its handler not begun yet (or begun moments ago: see
    # "Claimed and running" in docs/DESIGN.md). Losing the worker costs it no attempt.
    CLAIMED = "claimed", "Claimed"
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retrying"
    CANCEL_REQUESTED = "cancel_requested", "Cancel requested"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    TIMED_OUT = "timed_out", "Timed out"
    # Its task's should_execute() said no when its turn came: never run, the reason in
    # its progress message.
    SKIPPED = "skipped", "Skipped"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT,
                      Status.SKIPPED})
# Statuses a worker may claim (``retrying`` once its ``run_after`` has passed).
CLAIMABLE = frozenset({Status.PENDING, Status.RETRYING})
# Statuses of a run a worker holds: claimed ahead, or with its handler executing.
ACTIVE = frozenset({Status.CLAIMED, Status.RUNNING, Status.CANCEL_REQUESTED})

# to-status -> statuses it may be reached from.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(ACTIVE),  # recovery, requeue
    Status.CLAIMED: frozenset(CLAIMABLE),
    # From CLAIMABLE: engines that hand over one run and begin it at once (django-q2).
    Status.RUNNING: frozenset(CLAIMABLE | {Status.CLAIMED}),
    Status.RETRYING: frozenset({Status.CLAIMED, Status.RUNNING}),
    Status.CANCEL_REQUESTED: frozenset({Status.CLAIMED, Status.RUNNING}),
    # Not from cancel_requested: a handler that returns after a cancel request ends
    # canceled (outcome_status), its return value kept as a partial result.
    Status.COMPLETED: frozenset({Status.CLAIMED, Status.RUNNING}),
    Status.FAILED: frozenset(ACTIVE | CLAIMABLE),  # CLAIMABLE: unknown handler found at claim
    Status.TIMED_OUT: frozenset(ACTIVE),
    Status.CANCELED: frozenset(CLAIMABLE | ACTIVE),
    # Decided before the handler begins, by the worker that holds the run.
    Status.SKIPPED: frozenset({Status.CLAIMED, Status.RUNNING}),
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
    """Where an attempt's outcome really takes a run whose cancel was requested: a
    failed attempt is not retried and a handler that returned did not complete the
    work that was asked for; both end canceled (``retrying`` and ``completed`` are not
    reachable from ``cancel_requested``, so the outcome would be refused and the run
    left hanging). A run skipped after its cancel was requested ends canceled too: the
    cancel was asked for first."""
    if current == Status.CANCEL_REQUESTED and target in (Status.RETRYING, Status.COMPLETED,
                                                         Status.SKIPPED):
        return Status.CANCELED
    return target


# Mapping onto django.tasks' TaskResultStatus names (READY/RUNNING/SUCCESSFUL/FAILED).
DJANGO_STATUS = {
    Status.PENDING: "READY",
    Status.CLAIMED: "READY",
    Status.RETRYING: "READY",
    Status.RUNNING: "RUNNING",
    Status.CANCEL_REQUESTED: "RUNNING",
    Status.COMPLETED: "SUCCESSFUL",
    Status.FAILED: "FAILED",
    Status.CANCELED: "FAILED",
    Status.TIMED_OUT: "FAILED",
    Status.SKIPPED: "FAILED",  # not done: django.tasks has no "skipped"
}
