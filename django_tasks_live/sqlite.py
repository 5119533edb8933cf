"""SQLite settings that let several worker processes share one database file."""

from __future__ import annotations

from typing import Any


def configure_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    """WAL lets readers and one writer work at once; NORMAL sync is safe with WAL."""
    if connection.vendor != "sqlite" or connection.settings_dict["NAME"] in ("", ":memory:"):
        return
    if "mode=memory" in str(connection.settings_dict["NAME"]):
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if "timeout" not in connection.settings_dict.get("OPTIONS", {}):
            cursor.execute("PRAGMA busy_timeout=30000")


def recommended_options() -> dict[str, Any]:
    """``DATABASES[...]["OPTIONS"]`` for SQLite: write lock at BEGIN, long busy wait."""
    return {"transaction_mode": "IMMEDIATE", "timeout": 30}
