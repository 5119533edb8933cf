"""The executor process: receives claimed runs over a pipe and runs them one at a time.

Started with the ``spawn`` method, so it sets Django up itself and shares no sockets,
locks or threads with the supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1
IDLE_RECHECK = 5.0  # seconds without a run after which the DB connection is re-checked


def _die_with_parent() -> None:
    """If the supervisor is SIGKILLed, take the handler down too: a run must never keep
    executing after its worker is declared lost and the run is rescued elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the pipe's EOF still ends the loop after the current run
        pass


def close_unusable_connection() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.is_usable():
            connection.close()


def main(
    conn: Connection, settings_module: str, worker_id: str, parent_pid: int, stop_flag: Any
) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    # The supervisor decides when runs stop; a terminal's Ctrl-C must not kill handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    import django

    django.setup()

    from django.db import router

    from .. import events
    from ..models import Run
    from ..runner import execute
    from .pool import decode

    using = router.db_for_write(Run)

    outcome: list[Any] = []  # what the current run's record() reported

    def record(run: Any, target: Any, fields: dict[str, Any]) -> Any:
        # The supervisor writes outcomes in batches with its next claim (one commit);
        # this one travels with the run's "done".
        outcome[:] = [target, fields]
        for name, value in fields.items():
            setattr(run, name, value)
        run.status = target
        return run

    conn.send(("ready", os.getpid()))
    last_run = time.monotonic()
    inbox: deque[Any] = deque()
    while True:
        if not inbox:
            try:
                message: Any = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            inbox.extend(message)  # the runs the supervisor queued here, pickled, in order
            continue
        run = decode(inbox.popleft(), using)
        if stop_flag.value:  # the worker drains: leave queued runs to other workers
            conn.send(("skipped", run.pk))
            continue
        if time.monotonic() - last_run > IDLE_RECHECK:
            # Keep the connection across runs (reconnecting costs more than a no-op run),
            # but after a pause make sure it survived (the database may have restarted).
            close_unusable_connection()
        outcome.clear()
        try:
            execute(run.pk, worker_id, run=run, record=record)
        except Exception as exc:  # execute() records handler errors; this is our own failure
            conn.send(("error", run.pk, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("done", run.pk, *outcome))
        last_run = time.monotonic()
    events.pusher.flush()
