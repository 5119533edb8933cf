"""Publishing run events: persisted first (by :mod:`store`), pushed after commit.

The database (``RunEvent``) is the truth and the replay source; the channel layer is
only the fast path, so a push that is lost costs latency, never an event.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)

GROUP = "tasks_live"
MESSAGE_TYPE = "tasks_live.event"
# Several events in one layer message: one group_send per worker commit, not per event
# (each costs the sender ~0.3 ms of CPU with channels_redis).
BATCH_TYPE = "tasks_live.events"
BATCH_MAX = 100


def message(event_id: int | None, kind: str, state: dict[str, Any],
            owner_id: int | None = None) -> dict[str, Any]:
    """The channel-layer message for one event (``id`` None for push-only progress).

    ``owner`` (the run's owner id) lets the stream apply its authorization to the
    message without a database read."""
    return {"type": MESSAGE_TYPE, "id": event_id, "kind": kind, "run": state, "owner": owner_id}


def publish(messages: Iterable[dict[str, Any]], using: str = "default") -> None:
    """Push ``messages`` to the channel layer once the current transaction commits
    (held back for up to the :func:`holding` window this thread is in, if any)."""
    batch = list(messages)
    if batch:
        hold = _hold.get()
        transaction.on_commit(lambda: pusher.push(batch, hold), using=using)


_hold: contextvars.ContextVar[float] = contextvars.ContextVar("tasks_live_push_hold", default=0.0)


@contextlib.contextmanager
def holding(seconds: float) -> Iterator[None]:
    """Events published in this block may wait up to ``seconds`` before their push, to
    travel with the next push of this process in one layer message: a django-q2 worker
    holds a run's claim event so that a short run's claim and outcome cost one
    ``group_send`` (they are persisted at once all the same; a stream that sees a
    later id first reads the held one from the database)."""
    token = _hold.set(seconds)
    try:
        yield
    finally:
        _hold.reset(token)


def push_now(messages: Iterable[dict[str, Any]]) -> None:
    """Push without persisting (coalesced progress between two persisted updates)."""
    pusher.push(list(messages))


Listener = Callable[[dict[str, Any]], None]
_local_listeners: list[Listener] = []


def add_local_listener(listener: Listener) -> None:
    """Also hand this process's messages to ``listener`` (called from any thread).

    The stream's fan-out in a daphne process registers here: with the in-memory layer,
    whose queues are bound to one event loop, local delivery must not go through the
    pusher thread's own loop, so messages reach local streams directly instead.
    """
    _local_listeners.append(listener)


def remove_local_listener(listener: Listener) -> None:
    if listener in _local_listeners:
        _local_listeners.remove(listener)


def prepare() -> None:
    """Build the channel layer now (a worker process calls this before it takes runs,
    so importing and connecting the layer does not delay its first runs)."""
    _layer_is_local()


def _layer_is_local() -> bool:
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    layer = get_channel_layer()
    return layer is None or isinstance(layer, InMemoryChannelLayer)


class _Pusher:
    """One background thread per process sends to the channel layer.

    The runner never waits on the layer: a slow or absent layer must not slow tasks.
    The queue is bounded; when it is full new pushes are dropped, which subscribers
    notice as a gap in event ids and fill from the database. A push may be held back
    (``hold`` seconds at most): it is sent with the next push that is not, or when its
    time is up, whichever comes first; messages always leave in the order pushed.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: queue.Queue[tuple[list[dict[str, Any]], float]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._enabled = True
        self._held = 0  # messages the thread holds back (taken from the queue, not sent)

    def push(self, batch: list[dict[str, Any]], hold: float = 0.0) -> None:
        if not batch:
            return
        if _layer_is_local():
            # Only this process could receive an in-memory layer's messages: deliver here
            # (a worker process has no listeners, so its pushes cost nothing).
            for listener in list(_local_listeners):
                try:
                    for msg in batch:
                        listener(msg)
                except Exception:  # never let a listener fail the commit that pushed
                    logger.exception("tasks_live: local event listener failed")
            return
        if not self._enabled:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait((batch, time.monotonic() + hold))
        except queue.Full:
            logger.warning("tasks_live: push queue full, %d events left to replay", len(batch))

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tasks-live-pusher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        # A loop owned by this daemon thread; blocking get() keeps interpreter exit free.
        import asyncio

        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            self._enabled = False
            return
        loop = asyncio.new_event_loop()
        pending: list[dict[str, Any]] = []
        send_by = float("inf")  # when the held messages must leave at the latest
        while True:
            wait = send_by - time.monotonic()
            try:  # block while nothing is held; else until the held ones are due
                batch, due = self._queue.get(timeout=wait) if wait < float("inf") \
                    else self._queue.get()
                while True:
                    pending += batch
                    self._held = len(pending)
                    send_by = min(send_by, due)
                    if len(pending) >= BATCH_MAX:
                        break
                    batch, due = self._queue.get_nowait()  # whatever else is waiting
            except (queue.Empty, ValueError):  # ValueError: a negative timeout (overdue)
                pass
            if not pending:
                send_by = float("inf")
            elif time.monotonic() >= send_by or len(pending) >= BATCH_MAX:
                self._send(loop, layer, pending)
                pending, send_by, self._held = [], float("inf"), 0

    @staticmethod
    def _send(loop: Any, layer: Any, pending: list[dict[str, Any]]) -> None:
        for start in range(0, len(pending), BATCH_MAX):
            chunk = pending[start:start + BATCH_MAX]
            msg = chunk[0] if len(chunk) == 1 else {"type": BATCH_TYPE, "messages": chunk}
            try:
                loop.run_until_complete(layer.group_send(GROUP, msg))
            except Exception:  # the layer is best effort; the DB has the event
                logger.exception("tasks_live: channel layer push failed")

    def flush(self, timeout: float = 2.0) -> None:
        """Hand queued and held pushes to the layer now and wait until they are gone
        (used at worker exit, and before a worker kills itself)."""
        deadline = time.monotonic() + timeout
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(([], time.monotonic()))  # due now: sends the held
        while (not self._queue.empty() or self._held) and time.monotonic() < deadline:
            time.sleep(0.01)


pusher = _Pusher()
