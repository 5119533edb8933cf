"""Backpressure for one event stream: what a client has not read yet stays bounded.

daphne has none: a send never waits, and what a client does not read piles up in the
connection's write buffer (a probe measured 5.5 MB per stalled stream). Twisted, under
daphne, does tell a registered *producer* when that buffer passes 64 KiB and when it
drains; :class:`SendWindow` registers as one, and while paused a send waits. The
stream meanwhile keeps only a bounded mailbox (``SSE_QUEUE_SIZE`` events; past it, it
re-reads from the database once the client reads again), so a stalled stream holds at
most ``SSE_MAX_BUFFER_BYTES`` unsent (a larger write, such as a big snapshot or a
catch-up, goes in pieces as the client reads). A client that reads nothing for
``SSE_STALL_TIMEOUT`` seconds is disconnected; the browser reconnects with
``Last-Event-ID`` and gets what it missed from the database.

Under servers with their own backpressure (uvicorn, hypercorn), sends wait in the
server instead, and the stream falls back to database catch-up the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)


class StreamStalled(Exception):
    """The client stopped reading: the stream must be closed (it resumes by replay)."""


def twisted_request(send: Any) -> Any | None:
    """The Twisted request behind daphne's ASGI ``send`` (``partial(handle_reply,
    protocol)``), or None under another server."""
    if isinstance(send, functools.partial) and send.args:
        request = send.args[0]
        if callable(getattr(request, "registerProducer", None)) and getattr(
                request, "channel", None) is not None:
            return request
    return None


class SendWindow:
    """Sends body chunks to one client, waiting while its write buffer is full.

    An ``IPushProducer`` for Twisted: ``pauseProducing``/``resumeProducing`` are
    called from the reactor (the same event loop) as the write buffer fills and drains.
    """

    min_piece = 4096  # the smallest piece written when the window is open

    def __init__(self, send_body: Callable[..., Awaitable[None]], asgi_send: Any,
                 max_bytes: int, stall_timeout: float) -> None:
        self._send_body = send_body
        self.max_bytes = max_bytes
        self.stall_timeout = stall_timeout
        self.request = twisted_request(asgi_send)
        self.paused = False
        self.closed = False
        self.pauses = 0
        self._waiter: asyncio.Future[None] | None = None
        if self.request is not None:
            self.request.registerProducer(self, True)
            # Already full before we registered (the snapshot was large): start paused.
            self.paused = bool(getattr(self.request.channel, "_waitingForTransport", False))

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self, exc: BaseException | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- sending ------------------------------------------------------------------

    def buffered(self) -> int:
        """Bytes written to this connection that the client has not taken yet
        (what Twisted holds; 0 when the server is not daphne)."""
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if transport is None:
            return 0
        data = getattr(transport, "dataBuffer", b"")
        return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)

    async def send_body(self, body: bytes, *, more_body: bool = True) -> None:
        """Send ``body``, never leaving more than ``max_bytes`` unsent: a larger body
        goes in pieces as the client reads. Waits while the client's buffer is full;
        raises :class:`StreamStalled` when it stays full for ``stall_timeout`` seconds.
        """
        if self.request is None:  # another server: its own backpressure, if any
            await self._send_body(body, more_body=more_body)
            return
        pos = 0
        while True:
            await self._wait_for_room()
            if self.closed:
                return  # the connection is gone: daphne drops sends, so do we
            room = max(self.max_bytes - self.buffered(), self.min_piece)
            piece = body[pos:pos + room] if pos or len(body) > room else body
            pos += len(piece)
            done = pos >= len(body)
            await self._send_body(piece, more_body=more_body or not done)
            if done:
                return

    async def _wait_for_room(self) -> None:
        # A bare future and a loop timer, not asyncio.timeout: the stream may run this
        # stepped by hand from the hub's task (see Stream.push).
        # Twisted pauses us past 64 KiB unsent and resumes us once it has drained.
        while self.paused and not self.closed:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self.stall_timeout, self._wake, StreamStalled(
                f"the client read nothing for {self.stall_timeout:g} s"))
            try:
                await waiter
            finally:
                timer.cancel()

    def abort(self) -> None:
        """Drop the connection and what it buffered (a stalled client, or a cap)."""
        self.closed = True
        self._wake()
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abortConnection()

    def release(self) -> None:
        """Stop being the connection's producer (the stream ends)."""
        if self.request is not None:
            with contextlib.suppress(Exception):
                self.request.unregisterProducer()
