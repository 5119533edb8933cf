"""One reader of new run events per process, fanned out to every open stream.

Channel layers drop messages silently, and on PostgreSQL concurrent transactions can
commit event ids out of order. So a layer message about a persisted event is only a
wake-up: the :class:`Hub` reads new ``RunEvent`` rows itself, in id order, once per
process however many streams are open, and never moves its cursor past a hole in the
ids until the hole is filled or can no longer be (see :class:`Hole`). It also polls
every ``SSE_POLL_INTERVAL`` seconds, so events written by a process the layer does not
reach still arrive.

Push-only progress (messages with id None) is forwarded as is, after any read in
flight, so it never overtakes an older persisted event.

Each stream owns a bounded :class:`Mailbox`; a stream that falls behind loses its
mailbox contents and re-reads the missed events from the database instead. A stream
whose task waits idle, caught up, takes the hub's entries directly (its ``push``), so a
round costs no task wake-up per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async

from . import conf, events, store
from .models import RunEvent
from .states import TERMINAL

logger = logging.getLogger(__name__)

READ_BATCH = 500
# Events read per round at most: a burst of thousands goes out over a few rounds
# instead of being held in memory all at once (daphne keeps its peak memory).
ROUND_MAX = 4 * READ_BATCH
GROUP_REFRESH = 300.0  # re-join the layer group well inside any group expiry
OWNER_CACHE = 50_000
WRITE_COST = 50e-6  # batching window per open stream, in seconds (see _poll_loop)
WAKE_CHUNK = 50  # streams woken per event-loop turn (see _flush_outbox)


@dataclass(frozen=True, slots=True)
class Item:
    """One event as streams receive it, with its SSE frame encoded once per process."""

    event_id: int | None  # None: push-only progress
    run_id: int
    owner_id: int | None
    kind: str
    state: dict[str, Any]  # only what stream filters read (see matched)
    frame: bytes


# The fields of a run's state that stream filters and authorization read. An item keeps
# only these beside its frame: a held batch then costs its frames, not every state too
# (a stalled stream's mailbox holds up to SSE_QUEUE_SIZE items).
MATCHED_FIELDS = ("id", "task", "status", "labels")


def matched(state: dict[str, Any]) -> dict[str, Any]:
    return {name: state[name] for name in MATCHED_FIELDS if name in state}


@dataclass(frozen=True, slots=True)
class Batch:
    """Every event with ``after < id <= upto`` (ids in between were holes).

    ``payloads`` caches the encoded frames per stream filter: streams with the same
    filter (say, every staff page) share one filtering pass per batch.
    """

    after: int
    upto: int
    items: list[Item]
    payloads: dict[Any, bytes] = field(default_factory=dict, compare=False)


def encode(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def item_from_event(ev: RunEvent) -> Item:
    return Item(ev.pk, ev.run_id, getattr(ev, "run_owner_id", None), ev.kind, matched(ev.data),
                encode("run", {"kind": ev.kind, "run": ev.data}, ev.pk))


def item_from_message(msg: dict[str, Any]) -> Item:
    state = msg["run"]
    return Item(msg["id"], state["id"], msg["owner"], msg["kind"], matched(state),
                encode("run", {"kind": msg["kind"], "run": state}, msg["id"]))


def item_from_push(state: dict[str, Any], owner_id: int | None) -> Item:
    return Item(None, state["id"], owner_id, "progress", matched(state),
                encode("progress", {"run": state}))


class Mailbox:
    """A stream's bounded inbox. Overflow empties it and flags the stream to catch up.

    No timer per stream: the hub nudges mailboxes that have been idle for a heartbeat
    interval, so waking a stream costs one event, however many streams there are.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.overflowed = False
        self.heartbeat_due = False
        self.idle_since = time.monotonic()  # the stream's last write
        # Set by the stream while it waits with nothing queued: the hub then hands it a
        # round's entries by this call instead of queueing them and waking its task.
        # It returns False (having done nothing) when the entries need the task.
        self.direct: Callable[[list[Batch | Item]], bool] | None = None
        self._entries: deque[Batch | Item] = deque()
        self._count = 0
        self._ready = asyncio.Event()

    def put(self, entry: Batch | Item) -> None:
        self.direct = None  # queued entries go first: no direct hand-over past them
        if self.overflowed:
            return
        self._count += len(entry.items) if isinstance(entry, Batch) else 1
        if self._count > self.size:
            self._entries.clear()
            self._count = 0
            self.overflowed = True
        else:
            self._entries.append(entry)
        self._ready.set()

    def nudge(self) -> None:
        """Ask the stream for a heartbeat."""
        self.heartbeat_due = True
        self._ready.set()

    def wake(self) -> None:
        """Wake the stream's task with nothing queued (it has its own work to finish)."""
        self.direct = None
        self._ready.set()

    async def wait(self) -> None:
        await self._ready.wait()

    def take(self) -> tuple[list[Batch | Item], bool, bool]:
        """Everything queued, whether entries were dropped since the last take, and
        whether a heartbeat is due."""
        entries, overflowed, heartbeat = list(self._entries), self.overflowed, self.heartbeat_due
        self._entries.clear()
        self._count = 0
        self.overflowed = self.heartbeat_due = False
        self._ready.clear()
        return entries, overflowed, heartbeat


@dataclass(slots=True)
class Hole:
    """Event ids missing below newer committed ones (PostgreSQL commits out of order).

    Only a transaction that was writing events when the hole was seen can still fill
    it (one that took an id below a committed one began before that commit), so the
    hole is final once all of ``writers`` have ended and a read made after that still
    lacks ``first``: however long a starved transaction takes to commit, its events are
    never skipped, and a rolled-back one holds the stream up only until it ends.
    """

    first: int  # the first missing id
    writers: frozenset[str]  # store.event_writers() right after the hole was seen
    cleared: bool = False  # all of them had ended before the latest read began


class Hub:
    """The process's (event loop's) single reader and channel-layer subscriber."""

    def __init__(self) -> None:
        self.cursor = 0  # every event id <= cursor has been fanned out (or was a hole)
        self.ready = asyncio.Event()
        self.mailboxes: set[Mailbox] = set()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._held: list[dict[str, Any]] = []  # push-only messages waiting for a read
        self._pending: dict[int, dict[str, Any]] = {}  # layer messages about new events
        self._owners: OrderedDict[int, tuple[int | None, bool]] = OrderedDict()
        self._hole: Hole | None = None
        self._ordered = True  # ids commit in id order (SQLite): no hole to wait for
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: list[Batch | Item] = []  # this round's entries, for every mailbox
        # The hub's reads run on a thread of their own that keeps its DB connection:
        # one read per wake-up must not reconnect, nor queue behind streams' queries.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tasks-live-hub")

    # -- lifecycle

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll_loop(), name="tasks-live-hub-poll"),
                       asyncio.create_task(self._layer_loop(), name="tasks-live-hub-layer"),
                       asyncio.create_task(self._heartbeat_loop(), name="tasks-live-hub-beat")]

    def stop(self) -> None:
        from django.db import connections

        events.remove_local_listener(self._on_local_message)
        for task in self._tasks:
            task.cancel()
        self._reader.submit(connections.close_all)
        self._reader.shutdown(wait=False)

    async def _read(self, fn: Any, *args: Any) -> Any:
        return await self._loop.run_in_executor(
            self._reader, functools.partial(_with_fresh_connection_on_error, fn, *args)
        )

    # -- input

    def on_message(self, msg: dict[str, Any]) -> None:
        """A channel-layer message: a new event, or push-only progress to forward."""
        if msg.get("type") == events.BATCH_TYPE:
            items = msg.get("messages")
            for item in items[: events.BATCH_MAX] if isinstance(items, list) else ():
                if isinstance(item, dict):
                    self.on_message(item)
            return
        event_id = msg.get("id")
        if not isinstance(msg.get("run"), dict) or "id" not in msg["run"]:
            pass  # not ours to forward: a plain wake-up
        elif event_id is None:
            if len(self._held) < 10_000:
                self._held.append(msg)
        elif isinstance(event_id, int) and event_id > self.cursor and len(self._pending) < 10_000:
            self._pending[event_id] = msg
        self._wake.set()

    def _on_local_message(self, msg: dict[str, Any]) -> None:
        # Called from whichever thread committed; hop onto the hub's loop.
        try:
            self._loop.call_soon_threadsafe(self.on_message, msg)
        except RuntimeError:  # the loop is closed: this hub is gone
            events.remove_local_listener(self._on_local_message)

    # -- reading

    async def _poll_loop(self) -> None:
        last_round = 0.0
        while True:
            try:
                if not self.ready.is_set():
                    await self._start_cursor()
                # Under a sustained stream of events, deliver (and so write to every
                # client) at most once per window: one write per client then carries
                # several events. The window grows with the number of streams (a write
                # costs daphne ~10-40 µs per stream) up to SSE_BATCH_WINDOW, so a few
                # streams get every event at once; an event after a quiet spell always does.
                window = min(conf.get("SSE_BATCH_WINDOW"), len(self.mailboxes) * WRITE_COST)
                await asyncio.sleep(last_round + window - time.monotonic())
                last_round = time.monotonic()
                self._wake.clear()
                # What the layer brought goes out first; the read then adds whatever it
                # did not bring (dropped, lagging behind, or written out of its reach).
                before = self.cursor
                self._deliver_pending()
                if len(self.mailboxes) <= WAKE_CHUNK:
                    # Few streams: the layer's events go out before the read's thread
                    # hop. Many: one write per stream and round costs less CPU (a write
                    # is most of it), and the round goes out after the read.
                    await self._flush_outbox()
                for batch in await self._read(self._read_new, self.cursor):
                    self.cursor = batch.upto
                    self._fan_out(batch)
                await self._release_pushes()
                await self._flush_outbox()
                self.ready.set()
                busy = self.cursor != before
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is the source; keep trying, streams wait
                logger.exception("tasks_live: reading run events failed")
                await asyncio.sleep(conf.get("SSE_POLL_INTERVAL"))
                continue
            timeout = conf.get("SSE_POLL_INTERVAL")
            if self._hole is not None:
                timeout = min(timeout, 0.02)  # out-of-order commits settle in milliseconds
            elif busy:
                # Events are flowing: read again after the window without waiting for
                # the layer, whose messages lag behind when this process is busy.
                timeout = min(timeout, max(window, 0.02))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _deliver_pending(self) -> bool:
        """Fan out the layer's messages that continue the cursor without a gap.

        A message is sent after its transaction committed, so when its id is the next
        one, nothing can be missing before it. Returns True when messages remain beyond
        a gap. Layer messages can lag behind under load (one receive per loop turn), so
        the database is read after this in every round all the same.
        """
        pending, self._pending = self._pending, {}
        items = []
        following = self.cursor + 1
        while following in pending and "owner" in pending[following]:
            items.append(item_from_message(pending.pop(following)))
            following += 1
        if items:
            batch = Batch(self.cursor, following - 1, items)
            self.cursor = batch.upto
            self._fan_out(batch)
        return any(event_id > self.cursor for event_id in pending)

    async def _start_cursor(self) -> None:
        def start() -> tuple[bool, int]:
            return store.ids_commit_in_order(), store.settled_event_id()

        self._ordered, self.cursor = await self._read(start)

    def _read_new(self, cursor: int) -> list[Batch]:
        """Events after ``cursor`` in id order, up to the first hole that may still fill
        and at most ``ROUND_MAX`` of them (in a thread); the next round, a batching window
        later, reads on."""
        batches = []
        self._recheck_hole()
        for _ in range(ROUND_MAX // READ_BATCH):
            evs = store.events_after(cursor, limit=READ_BATCH, with_owner=True)
            accepted = self._contiguous(cursor, evs)
            if accepted:
                after, cursor = cursor, accepted[-1].pk
                batches.append(Batch(after, cursor, [item_from_event(e) for e in accepted]))
            if len(accepted) < READ_BATCH:
                break
        return batches

    def _recheck_hole(self) -> None:
        """Before a read: whether every writer that could fill the hole has ended (the
        read that follows then decides: still missing, it is skipped)."""
        hole = self._hole
        if hole is not None and not hole.cleared:
            hole.cleared = not hole.writers & store.event_writers()

    def _contiguous(self, cursor: int, evs: list[RunEvent]) -> list[RunEvent]:
        expected = cursor + 1
        for index, ev in enumerate(evs):
            if ev.pk != expected and not self._ordered:
                if self._hole is None or self._hole.first != expected:
                    self._hole = Hole(expected, store.event_writers())
                if not self._hole.cleared:
                    return evs[:index]
                logger.info("tasks_live: event ids %d..%d never committed; skipped",
                            expected, ev.pk - 1)
            expected = ev.pk + 1
        self._hole = None
        return evs

    # -- output

    def _fan_out(self, batch: Batch) -> None:
        for item in batch.items:
            self._remember(item.run_id, item.owner_id, item.state.get("status") in TERMINAL)
        self._outbox.append(batch)

    async def _flush_outbox(self) -> None:
        """Hand this round's entries, in order, to every stream, a chunk of streams per
        event-loop turn: daphne sends a stream's bytes on the loop turn after the stream
        wrote them, so the first chunk is on the wire while the next one is encoded,
        instead of every client waiting for the last stream of the round. A stream that
        waits idle takes them at once (``Mailbox.direct``); the others find them queued."""
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        mailboxes = list(self.mailboxes)
        for start in range(0, len(mailboxes), WAKE_CHUNK):
            if start:
                await asyncio.sleep(0)
            for mailbox in mailboxes[start:start + WAKE_CHUNK]:
                direct = mailbox.direct
                if direct is None or not direct(outbox):
                    for entry in outbox:
                        mailbox.put(entry)

    async def _release_pushes(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        unknown = {m["run"]["id"] for m in held} - set(self._owners)
        if unknown:
            owners = await self._read(store.run_owners, unknown)
            for run_id in unknown:
                self._remember(run_id, owners.get(run_id), False)
        for msg in held:
            owner_id, finished = self._owners.get(msg["run"]["id"], (None, True))
            if finished:  # a late preview must not overwrite a terminal state
                continue
            self._outbox.append(item_from_push(msg["run"], owner_id))

    def _remember(self, run_id: int, owner_id: int | None, finished: bool) -> None:
        self._owners[run_id] = (owner_id, finished)
        self._owners.move_to_end(run_id)
        if len(self._owners) > OWNER_CACHE:
            self._owners.popitem(last=False)

    async def _heartbeat_loop(self) -> None:
        while True:
            interval = conf.get("SSE_HEARTBEAT_INTERVAL")
            await asyncio.sleep(min(1.0, interval / 2))
            now = time.monotonic()
            for mailbox in list(self.mailboxes):
                if now - mailbox.idle_since >= interval:
                    mailbox.nudge()

    # -- the channel layer

    async def _layer_loop(self) -> None:
        from channels.layers import InMemoryChannelLayer, get_channel_layer

        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            # Only this process writes to an in-memory layer: take its messages directly.
            events.add_local_listener(self._on_local_message)
            return
        channel = await layer.new_channel()
        refresher = asyncio.create_task(self._refresh_group(layer, channel))
        try:
            while True:
                began = time.monotonic()
                try:
                    await layer.group_add(events.GROUP, channel)
                    while True:
                        self.on_message(await layer.receive(channel))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # redis-py's 5 s socket timeout can end channels_redis' 5 s blocking
                    # pop on an idle channel: retry at once. Anything lost was a wake-up
                    # only: read now. A real outage costs latency, polling continues.
                    self._wake.set()
                    if time.monotonic() - began < 1.0:
                        logger.warning("tasks_live: channel layer receive failed: %r", exc)
                        await asyncio.sleep(1.0)
        finally:
            refresher.cancel()
            await _quietly(layer.group_discard(events.GROUP, channel))

    async def _refresh_group(self, layer: Any, channel: str) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH)
            await _quietly(layer.group_add(events.GROUP, channel))


def _with_fresh_connection_on_error(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        from django.db import connections

        connections.close_all()  # the next read reconnects
        raise


async def _quietly(awaitable: Any) -> None:
    try:
        await asyncio.wait_for(awaitable, 2.0)
    except Exception:
        logger.debug("tasks_live: channel layer call failed", exc_info=True)


# ---------------------------------------------------------------- one hub per event loop

_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


async def join(mailbox: Mailbox, timeout: float = 10.0) -> Hub:
    """Register ``mailbox`` with this loop's hub (started on first use) once it is ready."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
        hub.start()
    hub.mailboxes.add(mailbox)
    try:
        await asyncio.wait_for(asyncio.shield(hub.ready.wait()), timeout)
    except BaseException:
        leave(mailbox)
        raise
    return hub


def leave(mailbox: Mailbox) -> None:
    """Unregister ``mailbox``; the last one out stops the hub (no idle polling)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        return
    hub.mailboxes.discard(mailbox)
    if not hub.mailboxes:
        hub.stop()
        del _hubs[loop]


def db(fn: Any) -> Any:
    """Stream-side store calls: off the event loop, with connection hygiene."""
    return database_sync_to_async(fn)

