"""Cron schedules: fire-time arithmetic, the missed-fire policy, validation, tick()."""

import datetime as dt
import logging

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from django_tasks_live import schedules
from django_tasks_live.models import Run, Schedule

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # a Monday, on the hour


def at(minutes: float = 0, seconds: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes, seconds=seconds)


def live(**overrides):
    return override_settings(TASKS_LIVE={"RETRY_BACKOFF_BASE": 0.05, **overrides})


@pytest.fixture
def every_minute(db):
    """A schedule of the 'noop' task firing every minute, next due at T0."""
    schedule = schedules.create_schedule("tick-tock", "noop", "* * * * *", kwargs={"n": 7})
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=T0)
    return schedule


@pytest.fixture(autouse=True)
def _code_schedules_synced(monkeypatch):
    # Unit tests control every schedule row; code schedules get their own test.
    monkeypatch.setattr(schedules, "_synced_pid", __import__("os").getpid())
    schedules._warned.clear()


# ---------------------------------------------------------------- fire times


def test_next_fire_time_is_strictly_after_and_in_utc():
    assert schedules.next_fire_time("*/15 * * * *", after=at(0)) == at(15)
    assert schedules.next_fire_time("*/15 * * * *", after=at(14, 59)) == at(15)
    assert schedules.next_fire_time("0 9 * * *", "UTC", after=T0).tzinfo == UTC


def test_fire_times_follow_the_schedule_time_zone():
    # 09:00 in New York is 14:00 UTC in January (EST, UTC-5).
    assert schedules.next_fire_time("0 9 * * *", "America/New_York", after=T0) == at(120)
    # ... and 13:00 UTC in July (EDT, UTC-4).
    july = dt.datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert schedules.next_fire_time("0 9 * * *", "America/New_York", after=july).hour == 13


def test_latest_fire_time_includes_the_instant_itself():
    assert schedules.latest_fire_time("* * * * *", "UTC", at(0)) == at(0)
    assert schedules.latest_fire_time("* * * * *", "UTC", at(0, 59)) == at(0)
    assert schedules.latest_fire_time("0 * * * *", "UTC", at(59)) == at(0)


@pytest.mark.parametrize("cron,tz,message", [
    ("not a cron", "UTC", "not a valid cron expression"),
    ("61 * * * *", "UTC", "not a valid cron expression"),
    ("0 0 31 2 *", "UTC", "never fires"),
    ("* * * * *", "Mars/Olympus", "not a known time zone"),
])
def test_bad_cron_or_zone_raise_schedule_error(cron, tz, message):
    with pytest.raises(schedules.ScheduleError, match=message):
        schedules.next_fire_time(cron, tz, after=T0)


# ---------------------------------------------------------------- the policy


@pytest.mark.django_db
def test_tick_fires_once_per_fire_time_and_advances(every_minute):
    runs = schedules.tick(at(0, 0.5))
    assert [(r.task_name, r.fire_time, r.kwargs) for r in runs] == [("noop", at(0), {"n": 7})]
    assert runs[0].schedule_id == every_minute.pk
    assert runs[0].labels == {"schedule": "tick-tock"}
    every_minute.refresh_from_db()
    assert (every_minute.next_run_at, every_minute.last_run_at) == (at(1), at(0))
    assert schedules.tick(at(0, 30)) == []  # not due again within the same minute
    assert [r.fire_time for r in schedules.tick(at(1, 1))] == [at(1)]


@pytest.mark.django_db
def test_missed_latest_makes_one_catch_up_run_for_the_most_recent_time(every_minute):
    with live(SCHEDULE_MISSED="latest"):
        runs = schedules.tick(at(180, 20))  # three hours of downtime
    assert [r.fire_time for r in runs] == [at(180)]
    every_minute.refresh_from_db()
    assert every_minute.next_run_at == at(181)


@pytest.mark.django_db
def test_missed_skip_makes_no_run_but_still_fires_on_time(every_minute):
    with live(SCHEDULE_MISSED="skip", SCHEDULE_MISFIRE_GRACE=10):
        assert schedules.tick(at(180, 20)) == []
        every_minute.refresh_from_db()
        assert every_minute.next_run_at == at(181)
        assert [r.fire_time for r in schedules.tick(at(181, 2))] == [at(181)]
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_tick_needs_an_aware_time(every_minute):
    with pytest.raises(ValueError, match="needs an aware datetime"):
        schedules.tick(dt.datetime(2026, 1, 5, 12, 0))
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_unknown_missed_policy_is_a_clear_error(every_minute):
    with live(SCHEDULE_MISSED="all"), pytest.raises(ValueError, match="SCHEDULE_MISSED"):
        schedules.tick(at(0))


@pytest.mark.django_db
def test_a_new_schedule_starts_counting_from_now(every_minute):
    Schedule.objects.filter(pk=every_minute.pk).update(next_run_at=None)
    assert schedules.tick(at(5, 30)) == []
    every_minute.refresh_from_db()
    assert every_minute.next_run_at == at(6)


@pytest.mark.django_db
def test_ticking_the_same_time_twice_never_duplicates(every_minute):
    assert len(schedules.tick(at(0, 1))) == 1
    # A slow worker that read the schedule before it advanced ticks the same minute.
    Schedule.objects.filter(pk=every_minute.pk).update(next_run_at=T0)
    assert schedules.tick(at(0, 2)) == []
    assert Run.objects.filter(schedule=every_minute).count() == 1


@pytest.mark.django_db
def test_a_slow_worker_never_moves_a_schedule_back(every_minute):
    from django_tasks_live import store

    assert store.advance_schedule(every_minute.pk, T0, at(1), at(0))
    assert not store.advance_schedule(every_minute.pk, T0, at(1), at(0))  # stale expectation


@pytest.mark.django_db
def test_disabled_schedules_do_not_fire(every_minute):
    Schedule.objects.filter(pk=every_minute.pk).update(enabled=False)
    assert schedules.tick(at(0, 1)) == []


# ---------------------------------------------------------------- broken schedules


@pytest.mark.django_db
def test_schedule_of_an_unregistered_task_is_skipped_with_a_warning(every_minute, caplog):
    Schedule.objects.filter(pk=every_minute.pk).update(task_name="gone-task")
    with caplog.at_level(logging.WARNING, logger="django_tasks_live"):
        assert schedules.tick(at(0, 1)) == []
        assert schedules.tick(at(0, 2)) == []
    warnings = [r for r in caplog.records if "gone-task" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not every tick
    every_minute.refresh_from_db()
    assert every_minute.next_run_at == T0  # left due for a worker that has the task


@pytest.mark.django_db
def test_a_broken_row_does_not_stop_the_others(every_minute, caplog):
    # Rows written around validation (raw update) must not crash the worker.
    Schedule.objects.create(name="broken", task_name="noop", cron="nope", next_run_at=T0)
    Schedule.objects.create(name="bad-zone", task_name="noop", cron="* * * * *",
                            timezone="Nowhere/Land", next_run_at=T0)
    with caplog.at_level(logging.WARNING, logger="django_tasks_live"):
        runs = schedules.tick(at(0, 1))
    assert [r.schedule_id for r in runs] == [every_minute.pk]
    assert "not a valid cron expression" in caplog.text
    assert "not a known time zone" in caplog.text


@pytest.mark.django_db
def test_kwargs_that_no_longer_fit_the_handler_skip_the_fire_time(every_minute, caplog):
    Schedule.objects.filter(pk=every_minute.pk).update(kwargs={"wrong": 1})
    with caplog.at_level(logging.ERROR, logger="django_tasks_live"):
        assert schedules.tick(at(0, 1)) == []
    assert "wrong" in caplog.text
    every_minute.refresh_from_db()
    assert every_minute.next_run_at == at(1)


# ---------------------------------------------------------------- validation


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.django_db
@pytest.mark.parametrize("cron", ["@hourly", "@daily", "0 3 * * mon-fri", "*/5 * * * *"])
def test_create_schedule_accepts_five_fields_and_aliases(cron):
    assert schedules.create_schedule("s", "noop", cron).cron == cron


def test_a_task_with_a_six_field_cron_is_refused_at_import():
    from django_tasks_live import task

    with pytest.raises(ValidationError, match="it has 6 fields"):
        task("every-second", cron="* * * * * *")


@pytest.mark.django_db
def test_a_six_field_row_written_around_validation_never_fires(every_minute, caplog):
    Schedule.objects.create(name="seconds", task_name="noop", cron="* * * * * *", next_run_at=T0)
    with caplog.at_level(logging.WARNING, logger="django_tasks_live"):
        runs = schedules.tick(at(0, 1))
    assert [r.schedule_id for r in runs] == [every_minute.pk]
    assert "'* * * * * *' is not a valid cron expression: it has 6 fields" in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs,field,message", [
    ({"cron": "every minute"}, "cron", "not a valid cron expression"),
    ({"cron": "* * * *"}, "cron", "not a valid cron expression"),
    ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
    ({"cron": "* * * * * *"}, "cron",
     "'* * * * * *' is not a valid cron expression: it has 6 fields, a cron expression has "
     "exactly five (minute hour day-of-month "
     "month day-of-week; no seconds or years)"),
    ({"cron": "0 0 * * * * 2030"}, "cron", "it has 7 fields"),
    ({"cron": ""}, "cron", "cannot be blank"),
    ({"queue": "no such queue"}, "queue", "queue must be 1-100 letters, digits or _.:@-"),
    ({"queue": "elsewhere"}, "queue", "queue 'elsewhere' is not one of the queues in TASKS"),
    ({"kwargs": {"n": _deep(100)}}, "kwargs",
     "is nested more than 100 levels deep"),
    ({"kwargs": {"n": "x\ud800"}}, "kwargs", "contains a lone surrogate"),
    ({"kwargs": {"n": float("nan")}}, "kwargs", "JSON cannot represent"),
    ({"timezone": "Europe/Atlantis"}, "timezone", "not a known time zone"),
    ({"task_name": "nope"}, "task_name", "Unknown task 'nope'"),
    ({"task_name": "noopp"}, "task_name", "Did you mean 'noop'"),
    ({"kwargs": {"when": dt.date(2026, 1, 1)}}, "kwargs", "not JSON-serializable"),
    ({"kwargs": {"bogus": 1}}, "kwargs", "unexpected keyword argument 'bogus'"),
    ({"kwargs": [1, 2]}, "kwargs", "must be a mapping"),
    ({"name": ""}, "name", "cannot be blank"),
])
def test_create_schedule_refuses_bad_input_with_a_clear_message(kwargs, field, message):
    args = {"name": "s", "task_name": "noop", "cron": "* * * * *", **kwargs}
    with pytest.raises(ValidationError) as info:
        schedules.create_schedule(**args)
    assert message in " ".join(info.value.message_dict[field])
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_create_schedule_refuses_a_duplicate_name():
    schedules.create_schedule("nightly", "noop", "0 3 * * *")
    with pytest.raises(ValidationError, match="already exists"):
        schedules.create_schedule("nightly", "noop", "0 4 * * *")


@pytest.mark.django_db
def test_create_schedule_sets_the_first_fire_time():
    schedule = schedules.create_schedule("hourly", "add", "0 * * * *", "Europe/Paris",
                                         {"a": 1, "b": 2}, queue="other")
    now = dt.datetime.now(UTC)
    assert now < schedule.next_run_at <= now + dt.timedelta(hours=1)
    assert schedule.next_run_at.minute == 0 and schedule.last_run_at is None
    assert schedule.queue == "other" and schedule.kwargs == {"a": 1, "b": 2}


@pytest.mark.django_db
def test_full_clean_refuses_invalid_cron_on_the_model():
    with pytest.raises(ValidationError, match="not a valid cron expression"):
        Schedule(name="x", task_name="noop", cron="99 * * * *").full_clean()


# ---------------------------------------------------------------- code schedules


@pytest.mark.django_db
def test_code_schedules_are_synced_once_per_process(monkeypatch):
    monkeypatch.setattr(schedules, "_synced_pid", None)
    schedules.tick(T0)
    code = Schedule.objects.get(name="code:every-minute")
    assert (code.task_name, code.cron, code.from_code) == ("every-minute", "* * * * *", True)
    assert code.next_run_at == at(1)  # initialised on its first tick, no run yet
    Schedule.objects.filter(pk=code.pk).delete()
    schedules.tick(at(1))
    assert not Schedule.objects.filter(name="code:every-minute").exists()  # not re-synced


@pytest.mark.django_db
def test_changed_code_cron_resets_the_next_fire_time_but_keeps_enabled():
    from django_tasks_live import store
    from django_tasks_live.registry import registry

    Schedule.objects.create(name="code:every-minute", task_name="every-minute", cron="0 * * * *",
                            from_code=True, enabled=False, next_run_at=T0)
    store.sync_code_schedules(registry)
    code = Schedule.objects.get(name="code:every-minute")
    assert (code.cron, code.next_run_at, code.enabled) == ("* * * * *", None, False)


# ---------------------------------------------------------------- settings checks


@pytest.mark.parametrize("overrides,check_id", [
    ({"SCHEDULE_MISSED": "all"}, "tasks_live.E003"),
    ({"SCHEDULE_MISFIRE_GRACE": -1}, "tasks_live.E004"),
    ({"RETENTION_KEEP_LAST": 2.5}, "tasks_live.E005"),
    ({"RETENTION_DAYS": "30"}, "tasks_live.E005"),
])
def test_bad_schedule_and_retention_settings_fail_the_system_checks(overrides, check_id):
    from django_tasks_live.checks import check_settings

    with live(**overrides):
        assert [e.id for e in check_settings()] == [check_id]
    with live(SCHEDULE_MISSED="skip", RETENTION_KEEP_LAST=10, RETENTION_DAYS=0.5):
        assert check_settings() == []
