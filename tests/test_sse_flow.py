"""SendWindow: sends wait while the client's write buffer is full; stalls and caps close."""

from __future__ import annotations

import asyncio
import functools

import pytest

from django_tasks_live.sse_flow import SendWindow, StreamStalled, twisted_request


class Transport:
    """Twisted's TCP transport as far as the window reads it: the unsent bytes."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class Channel:
    def __init__(self) -> None:
        self.transport = Transport()
        self._waitingForTransport = False


class Request:
    """daphne's WebRequest as far as the window uses it (a Twisted http.Request)."""

    def __init__(self) -> None:
        self.channel = Channel()
        self.producer = None
        self.buffer_size = 2**16

    def registerProducer(self, producer, streaming) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


async def handle_reply(protocol, message) -> None:
    transport = protocol.channel.transport
    transport._tempDataLen += len(message.get("body", b""))
    if transport._tempDataLen >= protocol.buffer_size and protocol.producer:
        protocol.producer.pauseProducing()  # as Twisted does past its bufferSize


def window(max_bytes: int = 1000, stall: float = 5.0, request: Request | None = None):
    request = request or Request()
    sent: list[bytes] = []
    asgi_send = functools.partial(handle_reply, request)

    async def send_body(body: bytes, *, more_body: bool = True) -> None:
        sent.append(body)
        await asgi_send({"type": "http.response.body", "body": body, "more_body": more_body})

    return SendWindow(send_body, asgi_send, max_bytes, stall), request, sent


def test_daphne_s_request_is_found_behind_its_send_and_nothing_else():
    request = Request()
    assert twisted_request(functools.partial(handle_reply, request)) is request
    assert twisted_request(handle_reply) is None
    assert twisted_request(functools.partial(handle_reply, object())) is None


def test_a_send_waits_while_paused_and_goes_out_on_resume():
    async def scenario():
        flow, request, sent = window()
        assert request.producer is flow
        await flow.send_body(b"a")
        flow.pauseProducing()  # Twisted: the write buffer passed 64 KiB
        pending = asyncio.ensure_future(flow.send_body(b"b"))
        await asyncio.sleep(0.05)
        assert sent == [b"a"] and not pending.done()  # nothing more piles up
        flow.resumeProducing()  # the client read: the buffer drained
        await pending
        assert sent == [b"a", b"b"] and flow.pauses == 1
        flow.release()
        assert request.producer is None

    asyncio.run(scenario())


def test_a_client_that_reads_nothing_for_the_stall_timeout_is_closed():
    async def scenario():
        flow, request, sent = window(stall=0.1)
        flow.pauseProducing()
        with pytest.raises(StreamStalled, match=r"the client read nothing for 0\.1 s"):
            await flow.send_body(b"never")
        assert sent == []
        flow.abort()
        assert request.channel.transport.aborted and flow.closed

    asyncio.run(scenario())


def test_a_body_larger_than_the_room_left_goes_in_pieces_as_the_client_reads():
    async def scenario():
        flow, request, sent = window(max_bytes=10)
        flow.min_piece = 1
        request.buffer_size = 4
        transport = request.channel.transport
        await flow.send_body(b"abcd")  # Twisted pauses: 4 bytes unsent
        pending = asyncio.ensure_future(flow.send_body(b"0123456789xyz", more_body=False))
        await asyncio.sleep(0.05)
        assert sent == [b"abcd"] and not pending.done()
        transport._tempDataLen = 0  # the client read everything
        flow.resumeProducing()  # Twisted: drained
        await asyncio.sleep(0.05)
        assert sent == [b"abcd", b"0123456789"]  # what fits; the rest once there is room
        transport._tempDataLen = 0
        flow.resumeProducing()
        await pending
        assert sent == [b"abcd", b"0123456789", b"xyz"]

    asyncio.run(scenario())


def test_a_window_registered_on_a_full_buffer_starts_paused():
    request = Request()
    request.channel._waitingForTransport = True
    flow, _, _ = window(request=request)
    assert flow.paused


def test_under_other_servers_sends_pass_straight_through():
    async def scenario():
        sent = []

        async def send_body(body: bytes, *, more_body: bool = True) -> None:
            sent.append(body)

        flow = SendWindow(send_body, handle_reply, 10, 1.0)
        await flow.send_body(b"z" * 100)
        flow.abort()  # no transport to drop: the stream ends its response itself
        flow.release()
        assert sent == [b"z" * 100] and flow.request is None

    asyncio.run(scenario())


def test_sends_after_the_connection_went_are_dropped():
    async def scenario():
        flow, _, sent = window()
        flow.pauseProducing()
        pending = asyncio.ensure_future(flow.send_body(b"late"))
        await asyncio.sleep(0)
        flow.stopProducing()  # Twisted: the connection is going away
        await pending
        assert sent == []

    asyncio.run(scenario())
