"""A worker inside the web process, for development and the demo (``EMBEDDED_WORKER``).

Threads, not processes: no hard time limits (cooperative ``ctx.check()`` still works),
and it stops with the web process. Use ``manage.py tasks_worker`` in production.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path

from django.db import DatabaseError, close_old_connections

from .. import conf, pauses, retention, store
from ..registry import registry
from ..runner import execute

logger = logging.getLogger(__name__)

_started = threading.Event()
_stop = threading.Event()


# Servers whose process serves the site's requests (``python -m daphne`` included).
SERVERS = ("daphne", "uvicorn", "hypercorn", "gunicorn", "granian")
# Threads of the embedded worker: a long run must not keep short ones waiting.
CONCURRENCY = 4


def serving_web(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """True in the process that serves requests (an ASGI server, or runserver's child).

    Management commands (``migrate``, ``shell``, ``tasks_worker``, ``test``) and test
    runners import the apps too; a worker thread there would claim runs and die with
    the command.
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if not argv:
        return False
    program = Path(argv[0])
    if program.name.startswith(SERVERS) or program.parent.name in SERVERS:
        return True
    if argv[1:2] == ["runserver"]:
        # The autoreloader's parent process only watches files; its child serves.
        return environ.get("RUN_MAIN") == "true" or "--noreload" in argv
    return False


def autostart() -> bool:
    """Start the embedded worker if ``EMBEDDED_WORKER`` is on and this process serves."""
    if conf.get("EMBEDDED_WORKER") and serving_web():
        logger.info("Embedded worker starting (%d threads; TASKS_LIVE['EMBEDDED_WORKER'])",
                    CONCURRENCY)
        return start(CONCURRENCY)
    return False


def start(concurrency: int = 2) -> bool:
    """Start the embedded worker once per process; returns False if already running."""
    if _started.is_set():
        return False
    _started.set()
    thread = threading.Thread(target=_loop, args=(concurrency,), name="tasks-live-embedded",
                              daemon=True)
    thread.start()
    return True


def stop() -> None:
    _stop.set()


def _loop(concurrency: int) -> None:
    worker_id = f"embedded-{socket.gethostname()}-{os.getpid()}"
    in_flight: set[int] = set()
    processed = [0]  # runs finished by this worker, for its Worker row (as tasks_worker counts)
    lock = threading.Lock()
    next_heartbeat = 0.0

    def run_one(run_id: int, run: object) -> None:
        try:
            execute(run_id, worker_id, run=run)  # type: ignore[arg-type]
        except Exception:
            logger.exception("Embedded worker failed on run %s", run_id)
        finally:
            close_old_connections()
            with lock:
                in_flight.discard(run_id)
                processed[0] += 1

    import time

    from .. import schedules

    registered = False
    next_sweep = 0.0
    while not _stop.is_set():
        try:
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + conf.get("HEARTBEAT_INTERVAL")
                if registered:
                    with lock:
                        done = processed[0]
                    store.heartbeat(worker_id, done)
                else:
                    # Until its Worker row exists, this worker's runs would look lost to
                    # recovery (its own included): register before claiming anything.
                    store.register_worker(worker_id, socket.gethostname(), os.getpid(), [],
                                          concurrency)
                    store.sync_tasks(registry)
                    registered = True
                store.recover_lost_runs(conf.get("HEARTBEAT_TIMEOUT"))
                schedules.tick()
                retention.tick(worker_id)
            if now >= next_sweep:  # limited runs no transaction admitted (see admission)
                next_sweep = now + conf.get("LIMITS_SWEEP_INTERVAL")
                store.sweep_limits()
            with lock:
                free = concurrency - len(in_flight)
            if free > 0:
                for run in store.claim(worker_id, None, free, begin=True,
                                       paused=pauses.current()):
                    with lock:
                        in_flight.add(run.pk)
                    # Daemon threads, not a ThreadPoolExecutor: the interpreter joins those
                    # at exit, so stopping the web server would wait for every running handler.
                    threading.Thread(target=run_one, args=(run.pk, run), daemon=True,
                                     name=f"tasks-live-run-{run.pk}").start()
        except DatabaseError as exc:  # tables not migrated yet, or the DB is away
            logger.debug("Embedded worker waiting for the database: %s", exc)
            close_old_connections()
            _stop.wait(2.0)
        _stop.wait(conf.get("POLL_INTERVAL") * 4)
