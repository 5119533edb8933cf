"""Side channel from handlers to the benchmark driver: one UDP datagram per handler start.

A handler calls :func:`mark` with the tag it was enqueued with; the datagram carries the
tag and the handler's ``time.time()``, so the driver learns when a run started without
asking the system under test. One ``sendto`` per run keeps the probe far cheaper than
any task queue's own bookkeeping. Loopback only.
"""

from __future__ import annotations

import os
import socket
import threading
import time

PORT_ENV = "BENCH_MARK_PORT"

_sock: socket.socket | None = None
_pid: int | None = None
_addr: tuple[str, int] | None = None


def mark(tag: int) -> None:
    """Report "handler ``tag`` starts now" to the driver (no-op outside a benchmark)."""
    global _sock, _pid, _addr
    if _pid != os.getpid():  # forked or spawned executor: its own socket
        port = os.environ.get(PORT_ENV)
        _addr = ("127.0.0.1", int(port)) if port else None
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if _addr else None
        _pid = os.getpid()
    if _sock is not None and _addr is not None:
        _sock.sendto(f"{tag} {time.time():.6f}".encode(), _addr)


class Marks:
    """The driver's receiver: a thread that records (tag, time) of every datagram."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._cond = threading.Condition()
        self._first: dict[int, float] = {}
        self._count: dict[int, int] = {}
        threading.Thread(target=self._receive, name="bench-marks", daemon=True).start()

    def _receive(self) -> None:
        while True:
            data = self._sock.recv(128)
            tag_text, ts_text = data.decode().split()
            tag, ts = int(tag_text), float(ts_text)
            with self._cond:
                self._first[tag] = min(ts, self._first.get(tag, ts))
                self._count[tag] = self._count.get(tag, 0) + 1
                self._cond.notify_all()

    def first(self, tag: int) -> float | None:
        """Earliest start reported for ``tag`` (datagrams may be dropped, the first is not)."""
        with self._cond:
            return self._first.get(tag)

    def count(self, tag: int) -> int:
        with self._cond:
            return self._count.get(tag, 0)

    def wait(self, tag: int, timeout: float) -> float | None:
        """Block until a handler with ``tag`` started; its start time, or None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: tag in self._first, timeout)
            return self._first.get(tag)
