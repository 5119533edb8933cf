"""Count SQL statements per process (profiling aid, enabled by ``BENCH_QUERY_LOG=<dir>``).

Each process writes ``<dir>/<pid>.json``: statement kind → count, e.g. ``"UPDATE tl_run"``,
and ``"<kind> s"`` → seconds spent in those statements (round trip and server time).
Written every 50 statements and at exit, since spawned executors leave with ``os._exit``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

_counts: Counter[str] = Counter()
_seconds: Counter[str] = Counter()
_total = 0  # statements of this process (a dump every 50)
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
        timed = {f"{kind} s": seconds for kind, seconds in _seconds.items()}
        Path(directory, f"{os.getpid()}.json").write_text(json.dumps({**_counts, **timed}))


def _wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    global _total
    kind = _kind(sql)
    _counts[kind] += 1
    _total += 1
    if _total % 50 == 0:
        _dump()
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        _seconds[kind] += time.perf_counter() - started


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: count every statement of this connection."""
    global _pid, _total
    if _pid != os.getpid():
        _pid = os.getpid()
        _counts.clear()
        _seconds.clear()
        _total = 0
        atexit.register(_dump)
    if _wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(_wrapper)
