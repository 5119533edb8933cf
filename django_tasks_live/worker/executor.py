"""The executor process: receives claimed runs over a pipe and runs them one at a time.

Started with the ``spawn`` method, so it sets Django up itself and shares no sockets,
locks or threads with the supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """If the supervisor is SIGKILLed, take the handler down too: a run must never keep
    executing after its worker is declared lost and the run is rescued elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the pipe's EOF still ends the loop after the current run
        pass


def main(conn: Connection, settings_module: str, worker_id: str, parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    # The supervisor decides when runs stop; a terminal's Ctrl-C must not kill handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    import django

    django.setup()
    from django.db import close_old_connections

    from .. import events
    from ..runner import execute

    conn.send(("ready", os.getpid()))
    while True:
        try:
            message: Any = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        run = message
        close_old_connections()
        try:
            execute(run.pk, worker_id, run=run)
        except Exception as exc:  # execute() records handler errors; this is our own failure
            conn.send(("error", run.pk, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("done", run.pk))
    events.pusher.flush()
