"""System checks on the database django-tasks-live stores its runs in."""

from django.db import connection

from django_tasks_live.checks import check_database


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_the_test_database_passes():
    assert "tasks_live.E010" not in ids(check_database())


def test_an_unsupported_database_is_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "mysql")
    [error] = [m for m in check_database() if m.id == "tasks_live.E010"]
    assert "'default' is mysql" in error.msg and "PostgreSQL or SQLite" in error.msg


def test_sqlite_without_immediate_transactions_is_warned(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    assert "tasks_live.W001" in ids(check_database())
