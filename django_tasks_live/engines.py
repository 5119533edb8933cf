"""The names of the engines a run can execute on (``Run.executor``).

A leaf module: the registry checks a task's ``executor`` option against these names,
and :mod:`.executors`, which looks tasks up in the registry, builds on them.
"""

from __future__ import annotations

from typing import Any

BUILTIN = "builtin"
DJANGO_Q = "django_q"
NAMES = (BUILTIN, DJANGO_Q)


def check_name(value: Any, what: str) -> str:
    """``value`` if it names an engine, else a ``ValueError`` that lists them."""
    if value not in NAMES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, NAMES))}, got {value!r}.")
    return value
