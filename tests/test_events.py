"""The pusher thread: held pushes travel with the next push, or leave when due."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from django_tasks_live import events


class Layer:
    """A channel layer that records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.arrived = threading.Event()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self.arrived.set()


@pytest.fixture
def layer(monkeypatch: pytest.MonkeyPatch) -> Layer:
    fake = Layer()
    monkeypatch.setattr(events, "_layer_is_local", lambda: False)
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *a, **k: fake)
    return fake


def msg(event_id: int) -> dict[str, Any]:
    return events.message(event_id, "status", {"id": event_id})


def ids(sent: dict[str, Any]) -> list[int]:
    return [m["id"] for m in sent.get("messages", [sent])]


def test_a_held_push_leaves_with_the_next_one_in_one_message(layer: Layer) -> None:
    pusher = events._Pusher()
    pusher.push([msg(1)], hold=5.0)
    time.sleep(0.05)
    assert layer.sent == []  # held
    pusher.push([msg(2)])
    assert layer.arrived.wait(2)
    pusher.flush()
    assert [ids(m) for m in layer.sent] == [[1, 2]]


def test_a_held_push_leaves_when_its_time_is_up(layer: Layer) -> None:
    pusher = events._Pusher()
    began = time.monotonic()
    pusher.push([msg(1)], hold=0.1)
    assert layer.arrived.wait(2)
    assert time.monotonic() - began >= 0.1
    assert [ids(m) for m in layer.sent] == [[1]]


def test_flush_sends_what_is_held(layer: Layer) -> None:
    pusher = events._Pusher()
    pusher.push([msg(1)], hold=60.0)
    time.sleep(0.05)
    pusher.flush()
    assert [ids(m) for m in layer.sent] == [[1]]


@pytest.mark.django_db
def test_holding_applies_to_events_published_in_its_block(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    pushed: list[tuple[list[dict[str, Any]], float]] = []
    monkeypatch.setattr(events.pusher, "push", lambda batch, hold=0.0: pushed.append((batch, hold)))
    with django_capture_on_commit_callbacks(execute=True):
        with events.holding(0.1):
            events.publish([msg(1)])
        events.publish([msg(2)])
    assert [([m["id"] for m in batch], hold) for batch, hold in pushed] == [([1], 0.1), ([2], 0.0)]
