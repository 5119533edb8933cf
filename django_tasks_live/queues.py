"""Which queue names a run may be put on: names a worker can serve.

``tasks_worker --queues`` accepts the same pattern, and when the project's ``TASKS``
setting gives this app's backend a ``QUEUES`` list, only those names (as
``django.tasks`` itself enforces for its tasks).
"""

from __future__ import annotations

import re
from typing import Any

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}\Z")
BACKEND_PATH = "django_tasks_live.backends.LiveTasksBackend"


def configured_queues() -> frozenset[str] | None:
    """The queue names declared by ``TASKS[...]["QUEUES"]`` of this app's backends
    (None when none declares any: every well-formed name is allowed)."""
    from django.conf import settings

    names: set[str] = set()
    for config in (getattr(settings, "TASKS", None) or {}).values():
        if isinstance(config, dict) and config.get("BACKEND") == BACKEND_PATH:
            names.update(config.get("QUEUES") or ())
    return frozenset(names) or None


def check_queue(name: Any, what: str = "queue") -> str:
    """``name`` if a worker could serve it, else ``ValueError`` saying why."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise ValueError(
            f"{what} must be 1-100 letters, digits or _.:@- (what tasks_worker --queues "
            f"accepts), got {name!r}."
        )
    allowed = configured_queues()
    if allowed is not None and name not in allowed:
        raise ValueError(
            f"{what} {name!r} is not one of the queues in TASKS[...]['QUEUES']: "
            f"{', '.join(sorted(allowed))}."
        )
    return name
