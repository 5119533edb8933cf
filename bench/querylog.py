"""Count SQL statements per process (profiling aid, enabled by ``BENCH_QUERY_LOG=<dir>``).

Each process writes ``<dir>/<pid>.json``: statement kind → count, e.g. ``"UPDATE tl_run"``.
Written every 50 statements and at exit, since spawned executors leave with ``os._exit``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

_counts: Counter[str] = Counter()
_pid = 0
_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)


def _kind(sql: str) -> str:
    words = sql.lstrip().split(None, 1)
    verb = words[0].upper() if words else "?"
    table = _TABLE.search(sql)
    lock = " FOR UPDATE" if "FOR UPDATE" in sql.upper() else ""
    return f"{verb} {table.group(1) if table else ''}{lock}".strip()


def _dump() -> None:
    directory = os.environ.get("BENCH_QUERY_LOG")
    if directory and _counts:
        Path(directory, f"{os.getpid()}.json").write_text(json.dumps(_counts))


def _wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    _counts[_kind(sql)] += 1
    if sum(_counts.values()) % 50 == 0:
        _dump()
    return execute(sql, params, many, context)


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: count every statement of this connection."""
    global _pid
    if _pid != os.getpid():
        _pid = os.getpid()
        _counts.clear()
        atexit.register(_dump)
    if _wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(_wrapper)
