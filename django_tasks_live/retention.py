"""Retention that applies itself: workers prune finished runs (``RETENTION_KEEP_LAST``
/ ``RETENTION_DAYS``) and old worker rows (``WORKER_RETENTION_DAYS``) on their own.

``tick(worker_id)`` is the one call a worker makes from its housekeeping. It returns
at once: at most every ``RETENTION_INTERVAL`` per process it starts a background
thread (the worker's loop is never held up by deletes), which takes the database
lease ``retention`` (one conditional UPDATE: one worker of all, at most once per
interval, whatever the number of workers) and then deletes at a bounded pace:
``RETENTION_MAX_BATCHES`` batches of ``RETENTION_BATCH_SIZE`` runs at most, each its
own short transaction, a short pause between them. A larger backlog is worked off over
the next intervals; ``tasks_prune`` remains for cron users and one-off clean-ups.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import DatabaseError, connections

from . import conf, store

logger = logging.getLogger(__name__)

LEASE = "retention"
BATCH_PAUSE = 0.05  # seconds between batches: other writers get SQLite's lock

_lock = threading.Lock()
_next_at = 0.0
_thread: threading.Thread | None = None


def prune_once(worker_id: str) -> dict[str, int] | None:
    """One round of retention if this worker gets the lease, else None. Returns what
    was deleted: ``{"runs": n, "events": m, "workers": w}``."""
    if not store.take_lease(LEASE, worker_id, conf.get("RETENTION_INTERVAL")):
        return None
    keep_last, days = conf.get("RETENTION_KEEP_LAST"), conf.get("RETENTION_DAYS")
    counts = {"runs": 0, "events": 0}
    if keep_last is not None or days is not None:
        counts = store.prune(keep_last, days, batch_size=conf.get("RETENTION_BATCH_SIZE"),
                             max_batches=conf.get("RETENTION_MAX_BATCHES"), pause=BATCH_PAUSE)
    worker_days = conf.get("WORKER_RETENTION_DAYS")
    counts["workers"] = store.prune_workers(worker_days) if worker_days is not None else 0
    if any(counts.values()):
        logger.info("Retention: deleted %(runs)s runs, %(events)s events, %(workers)s worker rows",
                    counts)
    return counts


def tick(worker_id: str) -> threading.Thread | None:
    """Start a retention round in the background when one is due in this process;
    returns the thread started (None: not due, or the last round still runs)."""
    global _next_at, _thread
    now = time.monotonic()
    with _lock:
        if now < _next_at or (_thread is not None and _thread.is_alive()):
            return None
        _next_at = now + conf.get("RETENTION_INTERVAL")
        _thread = threading.Thread(target=_round, args=(worker_id,), daemon=True,
                                   name="tasks-live-retention")
        _thread.start()
        return _thread


def _round(worker_id: str) -> Any:
    try:
        return prune_once(worker_id)
    except DatabaseError as exc:  # the next interval tries again
        logger.warning("Retention round failed: %s", exc)
        return None
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()  # this thread's own connections
