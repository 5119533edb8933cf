"""What may be stored as a run's JSON and text: checks shared by every entry point."""

from __future__ import annotations

import math
from typing import Any


def ensure_json(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the offending part unless ``value`` is plain JSON
    that every supported database stores (PostgreSQL refuses NUL characters)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise TypeError(f"{where} contains a NUL character (\\x00), which the database "
                            "cannot store.")
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot represent.")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            ensure_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r}; JSON object keys must be strings.")
            ensure_json(key, f"{where} key {key!r}")
            ensure_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serializable; "
        "pass plain JSON values (str, int, float, bool, None, list, dict)."
    )


def storable_text(text: str) -> str:
    """``text`` with NUL characters (which PostgreSQL refuses) replaced: for text a
    handler produces (exception messages, progress), which must never fail a write."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
