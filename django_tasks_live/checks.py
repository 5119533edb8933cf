"""System checks that explain misconfiguration (``manage.py check``)."""

from __future__ import annotations

from typing import Any

from django.core import checks

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def register() -> None:
    checks.register(check_database, checks.Tags.database)
    checks.register(check_settings)
    checks.register(check_stream_layer)


def check_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.db import connections, router

    from .models import Run

    alias = router.db_for_write(Run)
    settings_dict = connections[alias].settings_dict
    errors: list[checks.CheckMessage] = []
    vendor = connections[alias].vendor
    if vendor not in SUPPORTED_VENDORS:
        # Claims and event writes use UPDATE … RETURNING and JSON unpacking in SQL.
        errors.append(
            checks.Error(
                f"django-tasks-live stores runs in PostgreSQL or SQLite; the database "
                f"{alias!r} is {vendor}.",
                hint="Route django_tasks_live's models to a PostgreSQL or SQLite database.",
                id="tasks_live.E010",
            )
        )
    if vendor == "sqlite":
        mode = settings_dict.get("OPTIONS", {}).get("transaction_mode")
        if mode != "IMMEDIATE":
            errors.append(
                checks.Warning(
                    "SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE': concurrent "
                    "workers can hit 'database is locked'.",
                    hint="Use django_tasks_live.sqlite.recommended_options() in DATABASES.",
                    id="tasks_live.W001",
                )
            )
    return errors


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    from .conf import DEFAULTS

    errors: list[checks.CheckMessage] = []
    user = getattr(settings, "TASKS_LIVE", {})
    if not isinstance(user, dict):
        return [checks.Error("TASKS_LIVE must be a dict.", id="tasks_live.E001")]
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            checks.Error(f"Unknown TASKS_LIVE setting {key!r}.", id="tasks_live.E002",
                         hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.")
        )
    return errors + _check_schedule_and_retention({**DEFAULTS, **user})


def _check_schedule_and_retention(values: dict[str, Any]) -> list[checks.CheckMessage]:
    """Refuse at start-up what schedules.tick() and tasks_prune would refuse later."""
    import math

    def number(value: Any, whole: bool = False) -> bool:
        kinds = int if whole else int | float
        return (isinstance(value, kinds) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0)

    errors: list[checks.CheckMessage] = []
    if values["SCHEDULE_MISSED"] not in ("latest", "skip"):
        errors.append(checks.Error(
            f"TASKS_LIVE['SCHEDULE_MISSED'] must be 'latest' or 'skip', got "
            f"{values['SCHEDULE_MISSED']!r}.", id="tasks_live.E003"))
    if not number(values["SCHEDULE_MISFIRE_GRACE"]):
        errors.append(checks.Error(
            f"TASKS_LIVE['SCHEDULE_MISFIRE_GRACE'] must be a number of seconds >= 0, got "
            f"{values['SCHEDULE_MISFIRE_GRACE']!r}.", id="tasks_live.E004"))
    for name, whole in (("RETENTION_KEEP_LAST", True), ("RETENTION_DAYS", False)):
        if values[name] is not None and not number(values[name], whole):
            errors.append(checks.Error(
                f"TASKS_LIVE[{name!r}] must be None or a {'whole ' if whole else ''}number >= 0, "
                f"got {values[name]!r}.", id="tasks_live.E005"))
    return errors


def check_stream_layer(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Explain what the in-memory channel layer means for the live stream."""
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    from .conf import get

    layer = get_channel_layer()
    if layer is not None and not isinstance(layer, InMemoryChannelLayer):
        return []
    return [
        checks.Info(
            "The channel layer is in-memory (or absent): events written in the web process "
            "reach its streams at once, but events from separate tasks_worker processes "
            f"reach them by polling RunEvent every {get('SSE_POLL_INTERVAL')} s (nothing "
            "is lost; it is only slower), and several web processes do not wake each other.",
            hint="For instant delivery across processes use channels_redis.core."
            "RedisChannelLayer in CHANNEL_LAYERS; or silence tasks_live.I010.",
            id="tasks_live.I010",
        )
    ]
