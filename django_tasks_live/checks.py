"""System checks that explain misconfiguration (``manage.py check``)."""

from __future__ import annotations

from typing import Any

from django.core import checks

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def register() -> None:
    checks.register(check_database, checks.Tags.database)
    checks.register(check_settings)
    checks.register(check_stream_layer)
    checks.register(check_client_script, checks.Tags.staticfiles)
    checks.register(check_executors)
    checks.register(check_task_queues)
    checks.register(check_limits)
    checks.register(check_metrics, checks.Tags.urls)


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
    if values["WORKER_RETENTION_DAYS"] is not None and not number(values["WORKER_RETENTION_DAYS"]):
        errors.append(checks.Error(
            f"TASKS_LIVE['WORKER_RETENTION_DAYS'] must be None or a number >= 0, got "
            f"{values['WORKER_RETENTION_DAYS']!r}.", id="tasks_live.E005"))
    for name in ("RETENTION_INTERVAL", "RETENTION_BATCH_SIZE", "RETENTION_MAX_BATCHES"):
        whole = name != "RETENTION_INTERVAL"
        if not number(values[name], whole) or not values[name] > 0:
            errors.append(checks.Error(
                f"TASKS_LIVE[{name!r}] must be a {'whole ' if whole else ''}number > 0, got "
                f"{values[name]!r}.", id="tasks_live.E005"))
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


CLIENT_SCRIPT = "django_tasks_live/tasks_live.js"


def check_client_script(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when pages would get no ``tasks_live.js``: their Start buttons would do nothing."""
    from django.apps import apps
    from django.conf import settings

    from .asgi import static_url_is_local

    if not apps.is_installed("django.contrib.staticfiles"):
        return [checks.Warning(
            f"django.contrib.staticfiles is not installed: nothing serves {CLIENT_SCRIPT}, "
            "so live pages stay static and their buttons do nothing.",
            hint="Add 'django.contrib.staticfiles' to INSTALLED_APPS (or serve the app's "
                 "static/ directory at STATIC_URL yourself).",
            id="tasks_live.W020")]
    from django.contrib.staticfiles import finders

    if not finders.find(CLIENT_SCRIPT):
        return [checks.Warning(
            f"The staticfiles finders cannot find {CLIENT_SCRIPT}.",
            hint="Keep 'django.contrib.staticfiles.finders.AppDirectoriesFinder' in "
                 "STATICFILES_FINDERS.",
            id="tasks_live.W021")]
    if settings.DEBUG:
        if static_url_is_local():
            return []  # tasks_live_application() and runserver serve it
        return [checks.Warning(
            f"STATIC_URL is {settings.STATIC_URL!r}: {CLIENT_SCRIPT} must be served there.",
            hint="Use a local STATIC_URL such as '/static/' in development.",
            id="tasks_live.W022")]
    from django.contrib.staticfiles.storage import staticfiles_storage

    try:
        collected = staticfiles_storage.exists(CLIENT_SCRIPT)
    except Exception:  # STATIC_ROOT unset, or a remote storage that does not answer
        collected = False
    if collected:
        return []
    return [checks.Warning(
        f"DEBUG is off and {CLIENT_SCRIPT} is not in the static files storage "
        f"(STATIC_ROOT {getattr(settings, 'STATIC_ROOT', None)!r}): pages will not get it.",
        hint="Run `manage.py collectstatic` and serve STATIC_ROOT at STATIC_URL with WhiteNoise "
             "or the proxy. A worker-only machine may silence tasks_live.W023.",
        id="tasks_live.W023")]


def check_executors(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The engine settings, and the django-q2 settings that lose, delay or repeat work."""
    from django.apps import apps

    from .conf import get
    from .engines import DJANGO_Q, NAMES
    from .registry import registry

    errors: list[checks.CheckMessage] = []
    by_queue = get("QUEUE_EXECUTORS")
    if not isinstance(by_queue, dict):
        return [checks.Error(f"TASKS_LIVE['QUEUE_EXECUTORS'] must map queue names to engines, "
                             f"got {by_queue!r}.", id="tasks_live.E040")]
    chosen = {"TASKS_LIVE['EXECUTOR']": get("EXECUTOR")}
    chosen.update({f"TASKS_LIVE['QUEUE_EXECUTORS'][{q!r}]": e for q, e in by_queue.items()})
    for where, value in chosen.items():
        if value not in NAMES:
            errors.append(checks.Error(
                f"{where} must be one of {', '.join(map(repr, NAMES))}, got {value!r}.",
                id="tasks_live.E040"))
    used = DJANGO_Q in chosen.values() or any(spec.executor == DJANGO_Q for spec in registry)
    if not used:
        return errors
    if not apps.is_installed("django_q"):
        return [*errors, checks.Error(
            "Runs are handed to django-q2, but 'django_q' is not in INSTALLED_APPS.",
            hint="pip install 'django-tasks-live[django-q]' and add 'django_q' to INSTALLED_APPS.",
            id="tasks_live.E041")]
    return errors + _check_q_cluster()


def _check_q_cluster() -> list[checks.CheckMessage]:
    # settings, not django_q.conf.Conf: Conf is read once at import.
    from django.conf import settings
    from django.db import connections

    from .conf import get

    q = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(q, dict):
        return [checks.Error("Runs are handed to django-q2, but Q_CLUSTER is not a dict.",
                             id="tasks_live.E042")]
    errors: list[checks.CheckMessage] = []
    if q.get("sync"):
        errors.append(checks.Warning(
            "Q_CLUSTER['sync'] is True: each run executes inside the process that starts it, "
            "when its transaction commits (a request waits for it; no cluster guards it).",
            hint="Use sync only in tests of your own code.", id="tasks_live.W040"))
    retry, timeout = q.get("retry", 60), q.get("timeout")
    if timeout is not None and retry is not None and retry <= timeout:
        errors.append(checks.Warning(
            f"Q_CLUSTER['retry'] ({retry}) is not above Q_CLUSTER['timeout'] ({timeout}): "
            "django-q2 delivers its own tasks again while they still run, so they run twice. "
            "This app's runs are protected by their claim (a second delivery is refused), not "
            "by this setting.",
            hint="Set retry larger than timeout.", id="tasks_live.W041"))
    orm = q.get("orm")
    if (orm and orm in settings.DATABASES and connections[orm].vendor == "sqlite"
            and q.get("save_limit", 250) >= 0):
        errors.append(checks.Warning(
            "django-q2's ORM broker on SQLite with Q_CLUSTER['save_limit'] >= 0: its monitor "
            "writes a result row per task and competes for SQLite's one write lock; measured "
            "here it lost 153 of 1,000 results ('database is locked'). Hand-overs of this "
            "app's runs save no result (the run is the result), other tasks do.",
            hint="Set Q_CLUSTER['save_limit'] = -1.", id="tasks_live.W042"))
    retry_after = get("HANDOVER_RETRY")
    if q.get("ack_failures"):
        errors.append(checks.Info(
            "Q_CLUSTER['ack_failures'] is True: a hand-over whose claim failed (the database "
            f"was down) is dropped, not redelivered; its run waits {retry_after} s "
            "(TASKS_LIVE['HANDOVER_RETRY']) for the sweeper to hand it over again.",
            id="tasks_live.I041"))
    if q.get("max_attempts", 0):
        errors.append(checks.Info(
            f"Q_CLUSTER['max_attempts'] is {q['max_attempts']}: django-q2 stops redelivering a "
            "hand-over whose claim failed after that many attempts; its run then waits "
            f"{retry_after} s (TASKS_LIVE['HANDOVER_RETRY']) for the sweeper. Retries of a "
            "failed handler are this app's (@task(retries=...)), never django-q2's.",
            id="tasks_live.I042"))
    return errors


def check_task_queues(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A task whose queue is not in ``TASKS[...]["QUEUES"]`` could never be started."""
    from .queues import check_queue
    from .registry import registry

    errors: list[checks.CheckMessage] = []
    for spec in registry:
        try:
            check_queue(spec.queue, f"task {spec.name!r} queue")
        except ValueError as exc:
            errors.append(checks.Error(str(exc), id="tasks_live.E030",
                                       hint="Add the queue to QUEUES or change the task's queue."))
    return errors


def check_limits(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``TASKS_LIVE["LIMITS"]`` parses and names registered tasks and their arguments;
    tasks sharing a group declare it with the same figures."""
    from . import limits
    from .registry import _key_parameters, registry

    try:
        from_settings = limits.settings_limits()
    except (TypeError, ValueError) as exc:
        return [checks.Error(str(exc), id="tasks_live.E060")]
    errors: list[checks.CheckMessage] = []
    for name, declared in from_settings.items():
        spec = registry.find(name)
        if spec is None:
            errors.append(checks.Warning(
                f'TASKS_LIVE["LIMITS"] names {name!r}, which is not a registered task.',
                id="tasks_live.W061", hint=registry.unknown_message(name)))
            continue
        parameters = _key_parameters(list(spec.signature.parameters.values())[1:])
        for limit in declared:
            try:
                limit.check_parameters(name, parameters)
            except ValueError as exc:
                errors.append(checks.Error(f'TASKS_LIVE["LIMITS"]: {exc}', id="tasks_live.E061"))
    pairs = [(spec.name, limit) for spec in registry for limit in limits.limits_of(spec)]
    errors += [checks.Error(problem, id="tasks_live.E062",
                            hint="A group's key has one set of figures: declare them alike.")
               for problem in limits.conflicts(pairs)]
    return errors


def check_metrics(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The metrics view routed while prometheus_client is missing would answer 503."""
    from django.urls import get_resolver

    from . import metrics

    if metrics.available() or not _routes_to(get_resolver().url_patterns, metrics.metrics_view):
        return []
    return [checks.Error(
        "The tasks_live metrics endpoint is routed but prometheus_client is not installed.",
        id="tasks_live.E050", hint="pip install 'django-tasks-live[metrics]' (or prometheus_client).")]


def _routes_to(patterns: Any, view: Any) -> bool:
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            try:
                if _routes_to(pattern.url_patterns, view):
                    return True
            except Exception:  # a broken include is Django's own check's business
                continue
        elif getattr(pattern, "callback", None) is view:
            return True
    return False
