"""Who may see and act on runs.

One module so the stream, the views and the template tags apply the same rules:
staff may do everything, an authenticated user may watch and act on the runs they
own, and starting a task needs staff or the ``START_PERMISSION`` setting.
"""

from __future__ import annotations

from typing import Any

from . import conf


def _is_staff(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False))


def can_start(user: Any, task_name: str) -> bool:
    """May ``user`` start the task ``task_name`` from a page?"""
    if not getattr(user, "is_authenticated", False):
        return False
    if _is_staff(user):
        return True
    permission = conf.get("START_PERMISSION")
    return bool(permission) and user.has_perm(permission)


def can_manage_run(user: Any, run: Any) -> bool:
    """May ``user`` see, cancel or rerun ``run`` (staff, or the run's owner)?"""
    if not getattr(user, "is_authenticated", False):
        return False
    return _is_staff(user) or (run.owner_id is not None and run.owner_id == user.pk)


def visible_owner(user: Any) -> int | None:
    """The owner filter for listings: None for staff (all runs), else the user's id.

    Raises ``PermissionError`` for anonymous users, who see no runs.
    """
    if not getattr(user, "is_authenticated", False):
        raise PermissionError("Log in to see runs.")
    return None if _is_staff(user) else user.pk
