"""Cron expressions and time zones of schedules: what a schedule accepts, and why not.

Below the models and the registry, which both validate with it (``@task(cron=...)``,
``Schedule``'s field validators, ``create_schedule``).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def cron_problem(value: Any) -> str | None:
    """Why ``value`` is not a five-field cron expression (None when it is one).

    croniter also reads a sixth field (seconds) and a seventh (years): a schedule
    whose help says five fields would then fire every second. Refused on purpose.
    """
    from croniter import croniter

    if not isinstance(value, str) or not value.strip():
        return f"{value!r} is not a valid cron expression."
    fields = value.split()
    if len(fields) == 1 and fields[0].lower() in CRON_ALIASES:
        return None
    if len(fields) != 5:
        return (f"{value!r} is not a valid cron expression: it has {len(fields)} field"
                f"{'s' if len(fields) > 1 else ''}, a cron expression has exactly five "
                "(minute hour day-of-month month day-of-week; no seconds or years), or is "
                f"one of {', '.join(CRON_ALIASES)}.")
    if not croniter.is_valid(value):
        return f"{value!r} is not a valid cron expression."
    return None


def validate_cron(value: str) -> None:
    """A five-field cron expression (or an alias) that fires at some date."""
    from croniter import croniter

    problem = cron_problem(value)
    if problem is not None:
        raise ValidationError(problem, code="invalid_cron")
    try:  # valid syntax that matches no date at all, e.g. "0 0 31 2 *"
        croniter(value, timezone.now()).get_next(float)
    except (ValueError, KeyError):
        raise ValidationError(f"{value!r} never fires.", code="invalid_cron") from None


def validate_timezone(value: str) -> None:
    """A time zone name zoneinfo knows."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"{value!r} is not a known time zone.", code="invalid_tz") from exc
