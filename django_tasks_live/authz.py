"""Who may see and act on runs: one permission model for the endpoints, the stream,
the template tags and the admin.

Django's model permissions decide, as in the admin (``is_staff`` alone grants nothing).
This app's own permissions (``Run.Meta.permissions``) name each action:

* see every run: ``view_run`` (or ``change_run``);
* start a task: ``start_run``, or the ``START_PERMISSION`` setting (by default
  ``django_tasks_live.add_run``, as before ``start_run`` existed);
* cancel any run: ``cancel_run`` (or ``change_run``, as before);
* rerun any run: ``rerun_run`` (or ``change_run``), and the start permission (a rerun
  starts the task again);
* pause and resume tasks and queues: ``pause_run``;
* any logged-in user sees and cancels the runs they own, and reruns them when they may
  start that task. Anonymous users see and do nothing. Superusers have every permission.

A user with ``view_run`` only gets a read-only console: no buttons, 403 on a forged POST.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import conf

APP = "django_tasks_live"
VIEW_PERMISSIONS = (f"{APP}.view_run", f"{APP}.change_run")
CHANGE_PERMISSION = f"{APP}.change_run"
DEFAULT_START_PERMISSION = f"{APP}.add_run"
START_PERMISSION = f"{APP}.start_run"
CANCEL_PERMISSION = f"{APP}.cancel_run"
RERUN_PERMISSION = f"{APP}.rerun_run"
PAUSE_PERMISSION = f"{APP}.pause_run"


def _authenticated(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False) and getattr(user, "is_active", True))


def _has_any(user: Any, *perms: str) -> bool:
    return _authenticated(user) and any(user.has_perm(perm) for perm in perms)


def start_permission() -> str:
    """The permission ``START_PERMISSION`` names (default add_run); ``start_run``
    grants starting too."""
    return conf.get("START_PERMISSION") or DEFAULT_START_PERMISSION


def can_start(user: Any, task_name: str) -> bool:
    """May ``user`` start the task ``task_name`` (from a page, or by a rerun)?"""
    return _has_any(user, START_PERMISSION, start_permission())


def can_view_all(user: Any) -> bool:
    """May ``user`` see every run (not only their own)?"""
    return _has_any(user, *VIEW_PERMISSIONS)


def can_cancel_any(user: Any) -> bool:
    """May ``user`` cancel every run (``cancel_run``, or ``change_run``)?"""
    return _has_any(user, CANCEL_PERMISSION, CHANGE_PERMISSION)


def can_rerun_any(user: Any) -> bool:
    """May ``user`` rerun every run (``rerun_run`` or ``change_run``, and start)?"""
    return _has_any(user, RERUN_PERMISSION, CHANGE_PERMISSION) and can_start(user, "")


def can_pause(user: Any) -> bool:
    """May ``user`` pause and resume tasks and queues (``pause_run``)?"""
    return _has_any(user, PAUSE_PERMISSION)


def _owns(user: Any, run: Any) -> bool:
    return _authenticated(user) and run.owner_id is not None and run.owner_id == user.pk


def can_view_run(user: Any, run: Any) -> bool:
    """May ``user`` see ``run`` (its owner, or a user who may see every run)?"""
    return _owns(user, run) or can_view_all(user)


def can_manage_run(user: Any, run: Any) -> bool:
    """May ``user`` cancel ``run`` (its owner, or a user who may cancel every run)?"""
    return _owns(user, run) or can_cancel_any(user)


def can_rerun(user: Any, run: Any) -> bool:
    """May ``user`` rerun ``run``: start its task, and own it or may rerun every run."""
    return can_start(user, run.task_name) and (
        _owns(user, run) or _has_any(user, RERUN_PERMISSION, CHANGE_PERMISSION))


def visible_owner(user: Any) -> int | None:
    """The owner filter for listings: None for users who see every run, else the user's id.

    Raises ``PermissionError`` for anonymous users, who see no runs.
    """
    if not _authenticated(user):
        raise PermissionError("Log in to see runs.")
    return None if can_view_all(user) else user.pk


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
    """The default ``SSE_AUTHORIZE``: users with ``view_run``/``change_run`` see all runs,
    other users the runs they own, anonymous users nothing (None means 403)."""
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
