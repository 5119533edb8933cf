"""What may be stored as a run's JSON and text: checks shared by every entry point."""

from __future__ import annotations

import math
import re
from typing import Any

# Deeper values are refused: encoders, decoders and this check recurse, and a value
# nested ~1,000 deep exhausts Python's stack (a RecursionError in a worker's write).
MAX_DEPTH = 100
# Code points no database stores as text: NUL (PostgreSQL refuses it) and surrogates,
# which UTF-8 cannot encode (SQLite raises UnicodeEncodeError, PostgreSQL a DataError).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(text: str, where: str) -> None:
    """Raise ``TypeError`` if ``text`` holds a NUL or a lone surrogate."""
    if text.isascii() and "\x00" not in text:
        return
    bad = _UNSTORABLE.search(text)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise TypeError(f"{where} contains a NUL character (\\x00), which the database "
                        "cannot store.")
    raise TypeError(f"{where} contains a lone surrogate ({ascii(bad.group())[1:-1]} at "
                    f"position {bad.start()}), which is not valid Unicode text and cannot "
                    "be stored.")


def ensure_json(value: Any, where: str, depth: int = 0) -> None:
    """Raise ``TypeError`` naming the offending part unless ``value`` is plain JSON
    that every supported database stores (no NUL or lone surrogate in any text, no
    nesting deeper than :data:`MAX_DEPTH`)."""
    if isinstance(value, str):
        check_text(value, where)
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot represent.")
        return
    if isinstance(value, list | tuple | dict) and depth >= MAX_DEPTH:
        raise TypeError(f"{where} is nested more than {MAX_DEPTH} levels deep.")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            ensure_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r}; JSON object keys must be strings.")
            check_text(key, f"{where} key {key!a}")
            ensure_json(item, f"{where}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serializable; "
        "pass plain JSON values (str, int, float, bool, None, list, dict)."
    )


def storable_text(text: str) -> str:
    """``text`` with what no database stores (NUL, lone surrogates) replaced by U+FFFD:
    for text a handler produces (exception messages, progress), which must never fail
    a write."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def safe_str(value: Any) -> str:
    """``str(value)`` made storable, even when the object's ``__str__`` raises or
    returns something else than text (a handler's exception may do either)."""
    try:
        text = str(value)
        if not isinstance(text, str):  # a str subclass's __str__ may return anything
            raise TypeError("__str__ returned non-string")
    except Exception as exc:
        try:
            kind = type(value).__qualname__
        except Exception:
            kind = "object"
        text = f"<{kind} object; str() failed: {type(exc).__name__}>"
    return storable_text(text)


def parse_json(raw: bytes | str, where: str = "The body") -> Any:
    """Decode untrusted JSON text and check it (:func:`ensure_json`); raises
    ``ValueError`` with a reason fit for a 400 response."""
    import json

    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}.") from None
    try:
        ensure_json(data, where)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return data
