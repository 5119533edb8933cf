"""The Server-Sent Events endpoint: snapshot, replay from ``Last-Event-ID``, live events.

Served by daphne through Channels (see :mod:`django_tasks_live.asgi`). The protocol is
documented in ``docs/stream.md``. Design notes (``sse-on-channels.md``):

* ``AsyncHttpConsumer.http_request`` stops the consumer once ``handle()`` returns, so
  the stream runs in its own task and the consumer stays alive until the client goes.
  ``http.disconnect`` cancels the task and frees the mailbox at once.
* ``AsyncConsumer.dispatch`` closes old DB connections before every message; the
  stream does its database work in :func:`fanout.db` calls instead, so that is skipped.
* An exception after the response started would wedge daphne's reaper, so every
  exception in stream code is caught and the stream is ended cleanly instead.
* No per-stream channel-layer membership: the process's :class:`fanout.Hub` subscribes
  once and feeds each stream a bounded mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import Iterator
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.contrib.auth.models import AnonymousUser

from . import authz, conf, fanout, sse_query, store
from .authz import Access
from .fanout import Batch, Hub, Item, Mailbox, encode
from .sse_flow import SendWindow, StreamStalled
from .sse_query import BadStreamRequest, StreamQuery

logger = logging.getLogger(__name__)

CATCH_UP_BATCH = 500
# Frames are joined into writes of up to this size; a larger one (a batch's payload,
# shared by every stream with the same filter) is written as it is, so a stream whose
# client stalls mid-write never holds a copy of its whole queue.
JOIN_LIMIT = 64 * 1024
HEADERS = [
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Accel-Buffering", b"no"),
]


class EventStreamConsumer(AsyncHttpConsumer):
    """``GET /tasks/events/?task=&run=&status=&label=k:v&last_event_id=N``."""

    # No channel per connection: the hub holds the process's only layer subscription.
    channel_layer_alias = "tasks_live.no-layer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Without aclose_old_connections(): the stream's DB calls manage connections.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def http_request(self, message: dict[str, Any]) -> None:
        # Unlike the base class, do not stop the consumer when the response is sent.
        if message.get("more_body") or self._task is not None:
            return
        self._task = asyncio.create_task(self._serve(), name="tasks-live-sse")

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect()
        raise StopConsumer()

    async def disconnect(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        self._started = True
        await super().send_headers(status=status, headers=headers)

    async def _serve(self) -> None:
        mailbox = Mailbox(conf.get("SSE_QUEUE_SIZE"))
        joined = False
        window: SendWindow | None = None
        try:
            request = await self._accept()
            if request is None:
                return
            query, access, last_event_id = request
            try:
                hub = await fanout.join(mailbox)
                joined = True
            except TimeoutError:
                await self._reject(503, "The event stream is starting up; retry shortly.")
                return
            await self.send_headers(status=200, headers=HEADERS)
            # What the client has not read stays bounded (see sse_flow).
            window = SendWindow(self.send_body, self.base_send, conf.get("SSE_MAX_BUFFER_BYTES"),
                                conf.get("SSE_STALL_TIMEOUT"))
            await Stream(window.send_body, hub, mailbox, query, access).run(last_event_id)
        except asyncio.CancelledError:
            raise
        except StreamStalled as exc:
            logger.info("tasks_live: closed an event stream whose client stopped reading (%s); "
                        "it resumes with Last-Event-ID", exc)
            assert window is not None
            window.abort()
            if window.request is None:
                await self._close()
        except Exception:
            logger.exception("tasks_live: event stream failed; closing it")
            await self._close()
        finally:
            if window is not None:
                window.release()
            if joined:
                fanout.leave(mailbox)

    async def _accept(self) -> tuple[StreamQuery, Access, str | None] | None:
        """Validate and authorize the request; answer it with an error when refused."""
        if self.scope.get("method") != "GET":
            await self._reject(405, "The event stream only answers GET.", [(b"Allow", b"GET")])
            return None
        try:
            query, raw_id = sse_query.parse(self.scope.get("query_string", b""))
        except BadStreamRequest as exc:
            await self._reject(400, str(exc))
            return None
        user = self.scope.get("user") or AnonymousUser()
        access = await fanout.db(authz.stream_access)(user, self.scope)
        if access is None:
            await self._reject(403, "You may not watch these runs; log in first.")
            return None
        header = dict(self.scope.get("headers", [])).get(b"last-event-id")
        if header is not None:
            raw_id = header.decode("latin-1")
        return query, access, raw_id

    async def _reject(self, status: int, reason: str, extra: list[Any] | None = None) -> None:
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), *(extra or [])]
        await self.send_response(status, reason.encode(), headers=headers)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._started:
                await self.send_body(b"", more_body=False)
            else:
                await self._reject(503, "The event stream failed; retry shortly.")


class Stream:
    """One connection's events: snapshot or replay, then live, in id order, no duplicates.

    ``cursor`` is the last event id this stream has dealt with; everything it sends
    comes either from a hub batch that continues at the cursor, or from the database
    (replay, and catch-up after a gap or a mailbox overflow), never past ``hub.cursor``,
    which only moves past holes that are known to be final.
    """

    def __init__(self, send: Any, hub: Hub, mailbox: Mailbox, query: StreamQuery,
                 access: Access) -> None:
        self.send = send
        self.hub = hub
        self.mailbox = mailbox
        self.query = query
        self.access = access
        self.cursor = 0
        self.key = (query.key(), access.key())  # streams with equal keys see equal events
        # Run id -> newest event id already contained in that run's snapshot state.
        self.skip: dict[int, int] = {}
        self.failure: Exception | None = None  # raised by a send push() started
        self.unfinished: Any = None  # a send push() started that the server suspended

    async def run(self, raw_last_event_id: str | None) -> None:
        await self.start(raw_last_event_id)
        while True:
            # While this task waits with nothing queued, the hub hands it live events
            # through push(): no task wake-up per stream and event round.
            self.mailbox.direct = self.push
            try:
                await self.mailbox.wait()
            finally:
                self.mailbox.direct = None
            if self.failure is not None:
                raise self.failure
            if self.unfinished is not None:
                unfinished, self.unfinished = self.unfinished, None
                await unfinished
            entries, overflowed, heartbeat = self.mailbox.take()
            if entries or overflowed:
                await self.deliver(entries, overflowed)
            elif heartbeat:
                await self.flush([b": heartbeat\n\n"])

    async def start(self, raw: str | None) -> None:
        head = f"retry: {int(conf.get('SSE_RETRY_MS'))}\n\n".encode()
        reason = None
        if raw is not None:
            event_id = sse_query.parse_event_id(raw)
            if event_id is None:
                reason = f"Malformed Last-Event-ID {raw[:40]!r}."
            else:
                reason = await fanout.db(replay_refusal)(event_id)
            if reason is None:
                self.cursor = event_id
                await self.send(head, more_body=True)
                await self.catch_up(self.hub.cursor)
                return
            head += encode("reset", {"reason": reason})
        await self.send(head + await self.snapshot(), more_body=True)

    async def snapshot(self) -> bytes:
        self.cursor = self.hub.cursor
        rows = await fanout.db(store.snapshot)(
            self.query.runs(self.access, with_status=True), conf.get("SSE_SNAPSHOT_LIMIT")
        )
        self.skip = {state["id"]: last for state, last in rows if last > self.cursor}
        data = {"runs": [state for state, _ in rows], "last_event_id": self.cursor}
        return encode("snapshot", data, self.cursor)

    async def deliver(self, entries: list[Batch | Item], overflowed: bool) -> None:
        if overflowed:  # the mailbox dropped entries: the database has them
            await self.catch_up(self.hub.cursor)
            return
        frames: list[bytes] = []
        for entry in entries:
            if isinstance(entry, Batch) and entry.after > self.cursor:
                await self.flush(frames)  # a gap before this batch: fill it in order
                await self.catch_up(entry.after)
            self.add(entry, frames)
        await self.flush(frames)
        self.forget_skipped()

    def push(self, entries: list[Batch | Item]) -> bool:
        """Send ``entries`` now, from the hub, while this stream's task waits idle.

        Returns False, having changed nothing, when they start after a gap (the task
        fills it from the database). The server's send runs to its end right here when
        it does not suspend (daphne never does); a send that suspends (a server with
        backpressure) or raises is finished, or raised, by this stream's task, so a
        slow or broken client never holds up the hub or the other streams.
        """
        cursor = self.cursor
        for entry in entries:
            if isinstance(entry, Batch):
                if entry.after > cursor:
                    return False
                cursor = max(cursor, entry.upto)
        try:  # whatever fails here ends this stream only, never the hub's round
            frames: list[bytes] = []
            for entry in entries:
                self.add(entry, frames)
            self.forget_skipped()
            sending = self.flush(frames)  # stepped by hand: push() cannot await
            try:
                suspended_on = sending.send(None)
            except StopIteration:
                return True
            self.unfinished = _resume(sending, suspended_on)
        except Exception as exc:
            self.failure = exc
        self.mailbox.wake()  # and no more pushes until the task has dealt with it
        return True

    def add(self, entry: Batch | Item, frames: list[bytes]) -> None:
        """Append the frames of ``entry`` this stream should see (no gap before it)."""
        if isinstance(entry, Item):
            if self.visible(entry):
                frames.append(entry.frame)
            return
        if entry.after == self.cursor and not self.skip:  # the usual case: shared
            payload = entry.payloads.get(self.key)
            if payload is None:
                payload = entry.payloads[self.key] = b"".join(
                    item.frame for item in entry.items if self.visible(item))
            frames.append(payload)
        else:
            frames += [item.frame for item in entry.items
                       if item.event_id > self.cursor and self.visible(item)]
        self.cursor = max(self.cursor, entry.upto)

    def forget_skipped(self) -> None:
        if self.skip:
            self.skip = {run: last for run, last in self.skip.items() if last > self.cursor}

    async def catch_up(self, until: int) -> None:
        """Send the visible events in ``(cursor, until]`` from the database."""
        runs = self.query.runs(self.access, with_status=False)
        while self.cursor < until:
            evs = await fanout.db(store.events_after)(
                self.cursor, runs, CATCH_UP_BATCH, until=until, with_owner=True
            )
            frames = [item.frame for item in map(fanout.item_from_event, evs)
                      if self.visible(item)]
            after = until if len(evs) < CATCH_UP_BATCH else evs[-1].pk
            del evs  # a stalled send holds only the frames, not the rows they came from
            await self.flush(frames)
            self.cursor = after

    def visible(self, item: Item) -> bool:
        if item.event_id is not None and item.event_id <= self.skip.get(item.run_id, 0):
            return False
        return self.access.allows(item.owner_id, item.state) and self.query.matches(
            item.kind, item.state
        )

    async def flush(self, frames: list[bytes]) -> None:
        if any(frames):
            for chunk in _joined(frames, JOIN_LIMIT):
                await self.send(chunk, more_body=True)
            frames.clear()
            self.mailbox.idle_since = time.monotonic()


def _joined(frames: list[bytes], limit: int) -> Iterator[bytes]:
    """``frames`` as few writes, each the join of neighbours up to ``limit`` bytes (a
    single frame is passed on as it is: ``b"".join`` of one returns it, uncopied).

    Joined one write at a time: a send that waits on a stalled client holds one joined
    copy, not a copy of everything it was handed (a round of a burst, per stream)."""
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if run and size + len(frame) > limit:
            yield b"".join(run)
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    if run:
        yield b"".join(run)


@types.coroutine
def _resume(coro: Any, suspended_on: Any) -> Any:
    """Finish, inside a task, a coroutine that was stepped by hand until it suspended:
    hand what it waits on to the task, and pass results and exceptions back in."""
    while True:
        try:
            sent = yield suspended_on
        except BaseException as exc:  # cancellation included: the send gets it
            try:
                suspended_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                suspended_on = coro.send(sent)
            except StopIteration:
                return


def replay_refusal(event_id: int) -> str | None:
    """Why ``event_id`` cannot be replayed (None if it can)."""
    # Compared with the last id handed out, not the newest stored: a client may hold the
    # id of a snapshot taken while every event had been pruned.
    if event_id > store.last_assigned_event_id():
        return f"Event {event_id} is newer than any stored event (was the database reset?)."
    oldest = store.oldest_event_id()
    if oldest is not None and event_id < oldest - 1:
        return f"Event {event_id} is older than the retained events (oldest is {oldest})."
    return None
