"""The lifecycle table: which status moves are legal."""

import pytest

from django_tasks_live.states import (
    ACTIVE,
    ALLOWED_FROM,
    CLAIMABLE,
    DJANGO_STATUS,
    TERMINAL,
    IllegalTransition,
    Status,
    can_move,
    outcome_status,
)


def test_status_groups_do_not_overlap_and_cover_every_status():
    assert not (TERMINAL & CLAIMABLE or TERMINAL & ACTIVE or CLAIMABLE & ACTIVE)
    assert TERMINAL | CLAIMABLE | ACTIVE == set(Status)


@pytest.mark.parametrize("finished", sorted(TERMINAL))
def test_a_finished_run_never_moves_again(finished):
    assert not any(can_move(finished, target) for target in Status)


@pytest.mark.parametrize("current,target", [
    (Status.PENDING, Status.RUNNING),
    (Status.RETRYING, Status.RUNNING),
    (Status.RUNNING, Status.COMPLETED),
    (Status.RUNNING, Status.RETRYING),
    (Status.RUNNING, Status.CANCEL_REQUESTED),
    (Status.CANCEL_REQUESTED, Status.CANCELED),
    (Status.CANCEL_REQUESTED, Status.TIMED_OUT),
    (Status.PENDING, Status.CANCELED),
    (Status.RUNNING, Status.PENDING),  # a lost worker's run goes back
])
def test_legal_moves(current, target):
    assert can_move(current, target)


@pytest.mark.parametrize("current,target", [
    (Status.PENDING, Status.COMPLETED),  # never ran
    (Status.PENDING, Status.CANCEL_REQUESTED),  # nothing to ask: cancel it outright
    (Status.RETRYING, Status.TIMED_OUT),
    (Status.COMPLETED, Status.RUNNING),
    (Status.RUNNING, Status.RUNNING),
])
def test_illegal_moves(current, target):
    assert not can_move(current, target)


def test_every_status_maps_onto_django_tasks():
    from django_tasks_live.compat import TaskResultStatus

    assert set(DJANGO_STATUS) == set(Status)
    assert {TaskResultStatus[name] for name in DJANGO_STATUS.values()}
    assert DJANGO_STATUS[Status.COMPLETED] == "SUCCESSFUL"
    assert all(DJANGO_STATUS[s] == "FAILED" for s in TERMINAL - {Status.COMPLETED})


def test_illegal_transition_names_the_run_and_both_statuses():
    exc = IllegalTransition(7, "completed", "running")
    assert str(exc) == "Run 7 cannot move from 'completed' to 'running'."
    assert (exc.run_id, exc.current, exc.target) == (7, "completed", "running")
    assert isinstance(exc, ValueError)
    assert set(ALLOWED_FROM) == set(Status)


def test_a_retry_of_a_run_whose_cancel_was_requested_ends_canceled():
    assert outcome_status(Status.CANCEL_REQUESTED, Status.RETRYING) == Status.CANCELED
    assert outcome_status(Status.CANCEL_REQUESTED, Status.COMPLETED) == Status.CANCELED
    assert outcome_status(Status.RUNNING, Status.COMPLETED) == Status.COMPLETED
    assert not can_move(Status.CANCEL_REQUESTED, Status.COMPLETED)
    assert outcome_status(Status.RUNNING, Status.RETRYING) == Status.RETRYING
    assert outcome_status(Status.CANCEL_REQUESTED, Status.FAILED) == Status.FAILED


def test_skipped_is_terminal_and_decided_only_by_the_worker_holding_the_run():
    assert Status.SKIPPED in TERMINAL
    assert {s for s in Status if can_move(s, Status.SKIPPED)} == {Status.CLAIMED, Status.RUNNING}
    # A cancel asked for before the verdict wins: the run ends canceled, not skipped.
    assert outcome_status(Status.CANCEL_REQUESTED, Status.SKIPPED) == Status.CANCELED
