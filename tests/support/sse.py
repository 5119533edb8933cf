"""Reading Server-Sent Events in tests and benchmarks: a frame parser and a stream reader."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    """One SSE frame. ``event`` is "comment" for ``: ...`` lines and "retry" for hints."""

    event: str
    data: Any = None
    id: int | None = None
    received: float = 0.0

    @property
    def run(self) -> dict[str, Any]:
        return self.data["run"]


class FrameParser:
    """Incremental parser: ``feed(bytes)`` returns the frames completed so far."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        *frames, self._buffer = self._buffer.split(b"\n\n")
        now = time.monotonic()
        return [event for frame in frames if (event := self._parse(frame.decode(), now))]

    @staticmethod
    def _parse(frame: str, now: float) -> Event | None:
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            if line.startswith(":"):
                return Event("comment", line[1:].strip(), received=now)
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "retry" in fields:
            return Event("retry", int(fields["retry"]), received=now)
        if "data" not in fields:
            return None
        event_id = int(fields["id"]) if "id" in fields else None
        return Event(fields.get("event", "message"), json.loads(fields["data"]), event_id, now)


class StreamReader:
    """Reads one SSE response in a background thread; the test inspects ``events``.

    With ``reconnect=True`` it behaves like an ``EventSource`` (and ``TasksLive.EventSource``):
    when the response ends, fails or is refused, it waits the server's ``retry`` hint and
    connects again sending ``Last-Event-ID`` (the last id it saw); ``events`` then holds
    the frames of every connection in order, and ``connections`` counts them.
    """

    def __init__(self, url: str, *, cookies: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, reconnect: bool = False,
                 last_event_id: int | None = None) -> None:
        self.url = url
        self.reconnect = reconnect
        self.events: list[Event] = []
        self.status: int | None = None
        self.statuses: list[int] = []  # one per response received
        self.headers: httpx.Headers | None = None
        self.body = b""
        self.error: BaseException | None = None
        self.errors: list[BaseException] = []  # failed connections (reconnect=True)
        self.connections = 0
        self.last_event_id = last_event_id  # sent as Last-Event-ID when not None
        self.retry_ms = 1000
        self.ended = False
        self._stop = threading.Event()
        self._client = httpx.Client(cookies=cookies, headers=headers, timeout=httpx.Timeout(
            5.0, read=None))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._read_once()
                except BaseException as exc:
                    if self._stop.is_set():
                        return
                    if not self.reconnect:
                        self.error = exc
                        return
                    self.errors.append(exc)
                if not self.reconnect:
                    return
                self._stop.wait(self.retry_ms / 1000)
        finally:
            self.ended = True

    def _read_once(self) -> None:
        parser = FrameParser()
        headers = {}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        with self._client.stream("GET", self.url, headers=headers) as response:
            self.connections += 1
            self.status, self.headers = response.status_code, response.headers
            self.statuses.append(response.status_code)
            for chunk in response.iter_raw():
                if self._stop.is_set():
                    return
                if response.status_code != 200:
                    self.body += chunk
                    continue
                for event in parser.feed(chunk):
                    self.events.append(event)
                    if event.id is not None:
                        self.last_event_id = event.id
                    if event.event == "retry":
                        self.retry_ms = event.data

    def wait_for(self, predicate: Callable[[list[Event]], object], timeout: float = 15.0,
                 what: str = "events") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events):
                return
            if self.ended and self.status is not None:
                break
            time.sleep(0.02)
        if not predicate(self.events):
            raise AssertionError(f"{what} not seen on {self.url} (status {self.status}, "
                                 f"error {self.error!r}); got {[e.event for e in self.events]}")

    def run_events(self) -> list[Event]:
        return [e for e in self.events if e.event == "run"]

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(5)

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_status(reader: StreamReader, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while reader.status is None and time.monotonic() < deadline:
        time.sleep(0.02)
    while reader.status != 200 and not reader.ended and time.monotonic() < deadline:
        time.sleep(0.02)  # an error response: wait for its body
    assert reader.status is not None, f"no response from {reader.url}: {reader.error!r}"
    return reader.status

