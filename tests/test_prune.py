"""Retention: store.prune and ``manage.py tasks_prune``."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_tasks_live import store
from django_tasks_live.models import Run, RunEvent
from django_tasks_live.states import Status

pytestmark = pytest.mark.django_db

NOW = timezone.now()


def finished(task: str, days_ago: float, status: str = Status.COMPLETED) -> Run:
    """A finished run with its created event, ``days_ago`` days old."""
    run = store.create_runs([store.NewRun(task_name=task)])[0]
    Run.objects.filter(pk=run.pk).update(status=status, finished_at=NOW - dt.timedelta(days=days_ago))
    return run


def remaining() -> set[int]:
    return set(Run.objects.values_list("id", flat=True))


@pytest.fixture
def history():
    """Per task, four finished runs 40, 30, 20 and 1 days old (ids in that order)."""
    return {task: [finished(task, d).pk for d in (40, 30, 20, 1)] for task in ("a", "b")}


def test_keep_last_keeps_the_newest_runs_of_each_task(history):
    counts = store.prune(keep_last=2, days=None)
    assert remaining() == {*history["a"][2:], *history["b"][2:]}
    assert counts == {"runs": 4, "events": 4}
    assert RunEvent.objects.count() == 4  # the kept runs keep their events


def test_days_keeps_recent_runs(history):
    store.prune(keep_last=None, days=25)
    assert remaining() == {*history["a"][2:], *history["b"][2:]}


def test_a_run_goes_only_when_every_limit_lets_it_go(history):
    # keep the newest 1 per task OR anything younger than 35 days
    store.prune(keep_last=1, days=35)
    assert remaining() == {*history["a"][1:], *history["b"][1:]}


def test_keep_last_zero_drops_every_finished_run(history):
    store.prune(keep_last=0, days=None)
    assert remaining() == set()


def test_unfinished_runs_are_never_pruned(history):
    waiting = store.create_runs([store.NewRun(task_name="a")])[0]
    Run.objects.filter(pk=waiting.pk).update(created_at=NOW - dt.timedelta(days=400))
    running = finished("a", 100, status=Status.RUNNING)
    store.prune(keep_last=0, days=0)
    assert remaining() == {waiting.pk, running.pk}


def test_every_terminal_status_is_pruned():
    ids = {finished("t", 10, status=s).pk for s in
           (Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT)}
    assert store.prune(keep_last=None, days=5)["runs"] == len(ids)


def test_a_rerun_outlives_the_run_it_points_to():
    old = finished("a", 30)
    new = finished("a", 1)
    Run.objects.filter(pk=new.pk).update(rerun_of=old)
    store.prune(keep_last=None, days=10)
    assert Run.objects.get(pk=new.pk).rerun_of_id is None


def test_dry_run_counts_without_deleting(history):
    assert store.prune(keep_last=1, days=None, dry_run=True) == {"runs": 6, "events": 6}
    assert len(remaining()) == 8


def test_batches_delete_everything_they_select(history):
    assert store.prune(keep_last=None, days=10, batch_size=2) == {"runs": 6, "events": 6}
    assert remaining() == {history["a"][3], history["b"][3]}


def test_no_limit_prunes_nothing(history):
    assert store.prune(None, None) == {"runs": 0, "events": 0}


@pytest.mark.parametrize("kwargs,message", [
    ({"keep_last": -1, "days": None}, "keep_last must be an integer >= 0"),
    ({"keep_last": 1.5, "days": None}, "keep_last must be an integer >= 0"),
    ({"keep_last": None, "days": -2}, "days must be a number >= 0"),
    ({"keep_last": None, "days": float("nan")}, "days must be a number >= 0"),
    ({"keep_last": 1, "days": None, "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"keep_last": 2**63, "days": None}, "keep_last must be at most 1000000000"),
    ({"keep_last": None, "days": 1e300}, "days must be at most 36525"),
    ({"keep_last": 1, "days": None, "batch_size": 10**6}, "batch_size must be at most 10000"),
])
def test_store_prune_refuses_bad_limits(history, kwargs, message):
    with pytest.raises(ValueError, match=message):
        store.prune(**kwargs)
    assert len(remaining()) == 8


# ---------------------------------------------------------------- the command


def prune_cmd(*args: str, **options) -> str:
    out = StringIO()
    call_command("tasks_prune", *args, stdout=out, **options)
    return out.getvalue()


def test_command_prunes_and_reports(history):
    out = prune_cmd("--keep-last", "1", "--days", "25")
    assert out.strip() == ("Deleted 4 runs and 4 events "
                           "(keeping the newest 1 per task or runs finished in the last 25 days).")
    assert len(remaining()) == 4


def test_command_dry_run_deletes_nothing(history):
    out = prune_cmd("--dry-run", "--days", "25")
    assert out.startswith("Would delete 4 runs and 4 events")
    assert len(remaining()) == 8


def test_command_defaults_to_the_retention_settings(history):
    with override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": 3, "RETENTION_DAYS": None}):
        assert prune_cmd().startswith("Deleted 2 runs")
    with override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": None, "RETENTION_DAYS": 10}):
        assert prune_cmd().startswith("Deleted 4 runs")
    assert remaining() == {history["a"][3], history["b"][3]}


def test_command_dry_run_alone_uses_the_retention_settings(history):
    # `tasks_prune --dry-run` with RETENTION_* set counts what a cron `tasks_prune` deletes.
    with override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": 3, "RETENTION_DAYS": None}):
        out = prune_cmd("--dry-run")
    assert out.strip() == "Would delete 2 runs and 2 events (keeping the newest 3 per task)."
    assert len(remaining()) == 8
    with override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": None, "RETENTION_DAYS": None}), \
            pytest.raises(CommandError, match=r"pass --keep-last N and/or --days D, or set"):
        prune_cmd("--dry-run")


def test_command_options_override_the_settings(history):
    with override_settings(TASKS_LIVE={"RETENTION_KEEP_LAST": 0}):
        prune_cmd("--keep-last", "4")
    assert len(remaining()) == 8


@pytest.mark.parametrize("args,message", [
    ((), "Nothing to prune by"),
    (("--keep-last", "-1"), "--keep-last must be a whole number >= 0, got '-1'"),
    (("--keep-last", "ten"), "--keep-last must be a whole number >= 0, got 'ten'"),
    (("--keep-last", "2.5"), "--keep-last must be a whole number >= 0"),
    (("--days", "-3"), "--days must be a number >= 0, got '-3'"),
    (("--days", "soon"), "--days must be a number >= 0, got 'soon'"),
    (("--days", "inf"), "--days must be a number >= 0"),
    (("--days", "1", "--batch-size", "0"), "--batch-size must be at least 1"),
    # What the database would refuse: bigint out of range, date out of range, too many
    # SQL variables in one statement.
    (("--keep-last", "9" * 30), "--keep-last must be at most 1000000000, got '999"),
    (("--keep-last", str(2**63)), "--keep-last must be at most 1000000000"),
    (("--days", "1e300"), "--days must be at most 36525, got '1e300'"),
    (("--days", "3000000"), "--days must be at most 36525"),
    (("--days", "1", "--batch-size", "10" * 10), "--batch-size must be at most 10000"),
])
def test_command_bad_options_are_clear_errors(history, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        prune_cmd(*args)
    assert len(remaining()) == 8


def test_the_largest_accepted_options_work_on_the_database(history):
    out = prune_cmd("--keep-last", "1000000000", "--days", "36525", "--batch-size", "10000")
    assert out.startswith("Deleted 0 runs and 0 events")
    assert "Deleted 8 runs" in prune_cmd("--keep-last", "0", "--batch-size", "10000")


def test_command_keyword_options_are_checked_too(history):
    with pytest.raises(CommandError, match="--keep-last must be a whole number >= 0, got -5"):
        prune_cmd(keep_last=-5)


@pytest.mark.parametrize("settings,message", [
    ({"RETENTION_KEEP_LAST": -1}, r"TASKS_LIVE\['RETENTION_KEEP_LAST'\] must be a whole number"),
    ({"RETENTION_DAYS": 10**9}, r"TASKS_LIVE\['RETENTION_DAYS'\] must be at most 36525"),
    ({"RETENTION_DAYS": "30"}, r"TASKS_LIVE\['RETENTION_DAYS'\] must be a number"),
])
def test_command_bad_settings_are_clear_errors(history, settings, message):
    with override_settings(TASKS_LIVE=settings), pytest.raises(CommandError, match=message):
        prune_cmd()
