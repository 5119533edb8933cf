"""The executor process: set up, then run :class:`.runloop.RunLoop` until told to stop.

Started with the ``spawn`` method, so it sets Django up itself and shares no sockets,
locks or threads with the supervisor (nothing Django is imported before that).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Sequence
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


def main(
    conn: Connection,
    settings_module: str,
    worker_id: str,
    parent_pid: int,
    queues: Sequence[str] | None,
    stop_flag: Any,
    claims_left: Any,
    gate: Any,
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
    from .runloop import RunLoop

    events.prepare()
    loop = RunLoop(conn, worker_id, queues, stop_flag, claims_left, router.db_for_write(Run),
                   gate)
    loop.send(("ready", os.getpid()))
    loop.run()
    events.pusher.flush()
