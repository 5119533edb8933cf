"""Who may see and act on runs.

One module so the stream, the views and the template tags apply the same rules:
staff may do everything, an authenticated user may watch and act on the runs they
own, and starting a task needs staff or the ``START_PERMISSION`` setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


# ---------------------------------------------------------------- the event stream


@dataclass(frozen=True)
class Access:
    """What one stream connection may see: runs matching every field that is set.

    ``owner_id``: only runs owned by this user; ``labels``: only runs carrying all of
    these labels (multi-tenant setups). The default ``Access()`` sees every run.
    """

    owner_id: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """A hashable form of what this access allows."""
        return (self.owner_id, tuple(sorted(self.labels.items())))

    def allows(self, owner_id: int | None, state: dict[str, Any]) -> bool:
        if self.owner_id is not None and owner_id != self.owner_id:
            return False
        run_labels = state.get("labels") or {}
        return all(run_labels.get(key) == value for key, value in self.labels.items())


def default_authorize(user: Any, scope: dict[str, Any]) -> Access | None:
    """The default ``SSE_AUTHORIZE``: staff see all runs, other users the runs they own,
    anonymous users nothing (None means 403)."""
    try:
        owner_id = visible_owner(user)
    except PermissionError:
        return None
    return Access(owner_id=owner_id)


def stream_access(user: Any, scope: dict[str, Any]) -> Access | None:
    """Call the ``SSE_AUTHORIZE`` callable for one stream connection."""
    from django.utils.module_loading import import_string

    authorize = conf.get("SSE_AUTHORIZE")
    if isinstance(authorize, str):
        authorize = import_string(authorize)
    access = authorize(user, scope)
    if access is not None and not isinstance(access, Access):
        raise TypeError(f"SSE_AUTHORIZE must return an authz.Access or None, got {access!r}.")
    return access
