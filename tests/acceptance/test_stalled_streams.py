"""Clients that stop reading cannot make daphne hold unbounded memory (issue 13.11).

A real daphne, raw sockets that send a stream request and never read (a tiny receive
window), and bursts of thousands of events: daphne's resident memory stays bounded
while they stall, every stalled stream is closed once it has read nothing for
``SSE_STALL_TIMEOUT``, and a burst after that costs nothing more.
"""

from __future__ import annotations

import re
import socket

import pytest
from django.contrib.auth.models import User

from django_tasks_live import store
from tests.acceptance.test_stream import daphne, session_cookie
from tests.support.processes import children, wait_until
from tests.support.sse import StreamReader
from tests.support.users import operator

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

STALLED = 30
MAX_BUFFER_KIB = 256  # SSE_MAX_BUFFER_BYTES here: what one stream may leave unsent
RUNS_PER_BURST = 6000
LABEL = "x" * 300  # ~700 bytes of state per event: ~4 MB per burst and stream
CLOSED = re.compile(r"^tasks_live: closed an event stream whose client stopped reading \((.*?)\)",
                    re.MULTILINE)  # the message alone: the line of our handler, not daphne's root one


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def stalled_client(port: int, cookie: str) -> socket.socket:
    """A stream request whose reader never reads: 4 KiB receive window, no recv()."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /tasks/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Cookie: sessionid={cookie}\r\n\r\n".encode())
    return sock


def answered(sock: socket.socket) -> bool:
    """Has the response begun (peeked: the byte stays unread)?"""
    sock.settimeout(0.05)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b"H"
    except TimeoutError:
        return False


def burst(owner: User) -> int:
    """RUNS_PER_BURST created events, in transactions of 200; returns the last run id."""
    last = 0
    for _ in range(RUNS_PER_BURST // 200):
        runs = store.create_runs([store.NewRun("noop", labels={"pad": LABEL}, owner_id=owner.pk)
                                  for _ in range(200)])
        last = runs[-1].pk
    return last


def seen(reader: StreamReader, run_id: int) -> bool:
    return any(e.event == "run" and e.run["id"] == run_id for e in reader.events)


def test_stalled_readers_hold_bounded_memory_and_are_closed(tmp_path):
    staff = operator()
    cookie = session_cookie(staff)["sessionid"]
    with children(tmp_path) as spawn:
        url, server = daphne(spawn, TASKS_LIVE_SSE_STALL_TIMEOUT="40",
                             TASKS_LIVE_SSE_MAX_BUFFER=str(MAX_BUFFER_KIB * 1024),
                             TASKS_LIVE_LOG_LEVEL="INFO", TASKS_LIVE_SSE_HEARTBEAT="1")
        port = int(url.split(":")[2].split("/")[0])
        pid = server.pid
        healthy = StreamReader(url, cookies={"sessionid": cookie})
        healthy.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
        # A first burst with no stalled reader grows daphne to its working set for such
        # a burst (Python keeps freed memory for reuse): what grows later is the stalls'.
        last = burst(staff)
        healthy.wait_for(lambda ev: seen(healthy, last), 120, "the warm-up burst")
        sockets = [stalled_client(port, cookie) for _ in range(STALLED)]
        try:
            wait_until(lambda: all(answered(s) for s in sockets), 30, "stalled streams open")
            before = rss_kib(pid)
            last = burst(staff)
            healthy.wait_for(lambda ev: seen(healthy, last), 120, "the burst on a healthy stream")
            during = rss_kib(pid)  # every stalled stream has had the whole burst to hold
            last = burst(staff)  # still stalled: unbounded, each would hold twice as much
            healthy.wait_for(lambda ev: seen(healthy, last), 120, "a second stalled burst")
            during_more = rss_kib(pid)
            assert not CLOSED.findall(server.output()), "closed too early to measure"
            wait_until(lambda: len(CLOSED.findall(server.output())) >= STALLED, 180,
                       "every stalled stream closed")
            closed = CLOSED.findall(server.output())
            after_close = rss_kib(pid)
            last = burst(staff)  # nobody stalls now: nothing more is held
            healthy.wait_for(lambda ev: seen(healthy, last), 120, "the burst after")
            after_third = rss_kib(pid)
        finally:
            for sock in sockets:
                sock.close()
            healthy.close()
    print(f"daphne RSS KiB: before the stalled bursts {before}, after one {during}, after two "
          f"{during_more}, after the closures {after_close}, after a burst then "
          f"{after_third}; closures: {closed[:2]}")
    # Unbounded, each stalled stream held every burst (~4 MB each: 30 streams ~120 MB a
    # burst). Bounded, each holds at most SSE_MAX_BUFFER_BYTES unsent plus one queue of
    # events waiting to go, whatever the bursts: the second costs (nearly) nothing.
    assert during - before < STALLED * 2 * 1024
    assert during_more - during < 10 * 1024
    assert len(closed) == STALLED and all("read nothing for 40 s" in reason for reason in closed)
    assert after_third - after_close < 10 * 1024  # what was held went with the sockets
    assert seen(healthy, last)  # the reader that reads got everything meanwhile
