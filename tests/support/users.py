"""Users with the permissions the tests need (``is_staff`` alone grants nothing)."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User

OPERATOR_PERMISSIONS = ("add_run", "view_run", "change_run")


def grant(user: User, *codenames: str) -> User:
    """``user`` re-read (no permission cache) with these django_tasks_live permissions."""
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="django_tasks_live", codename__in=codenames))
    return User.objects.get(pk=user.pk)


def operator(username: str = "staff") -> User:
    """A staff user who may see, start, cancel and rerun every run, as in the admin."""
    return grant(User.objects.create_user(username, password="x", is_staff=True),
                 *OPERATOR_PERMISSIONS)
