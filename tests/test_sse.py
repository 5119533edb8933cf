"""The event stream in-process: the consumer driven through ASGI, runs executed in threads.

The acceptance tests (``tests/acceptance/test_stream.py``) repeat the important cases
against a real daphne and worker process; these cover the protocol's details fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.db import close_old_connections, connection, transaction
from django.test import override_settings

import django_tasks_live as tasks_live
from django_tasks_live import authz, events, fanout, runner, sse, sse_query, store
from django_tasks_live.authz import Access
from django_tasks_live.fanout import Batch, Hub, Mailbox
from django_tasks_live.models import RunEvent
from django_tasks_live.sse import EventStreamConsumer, Stream
from django_tasks_live.sse_query import BadStreamRequest, StreamQuery
from tests.support.db import requires_postgres
from tests.support.sse import Event, FrameParser
from tests.support.users import grant, operator

# ---------------------------------------------------------------- request parsing


def test_filters_accept_commas_and_repeated_parameters():
    query, last = sse_query.parse(b"task=a,b&task=c&run=1,2&status=running&label=env:prod"
                                  b"&last_event_id=7")
    assert query.tasks == {"a", "b", "c"}
    assert query.run_ids == {1, 2}
    assert query.statuses == {"running"}
    assert query.labels == {"env": "prod"}
    assert last == "7"


@pytest.mark.parametrize("qs, reason", [
    (b"status=bogus", "Unknown status 'bogus'"),
    (b"run=abc", "run must be a run id"),
    (b"run=-1", "run must be a run id"),
    (b"label=novalue", "label must be key:value"),
    (b"label=a__b:1", "label must be key:value"),
    (b"label=k:1&label=k:2", "given twice"),
    (b"colour=red", "Unknown parameter(s) colour"),
    (b"task=" + b"x" * 201, "longer than 200"),
    (b"task=" + b",".join(b"t%d" % i for i in range(51)), "Too many task values (51)"),
    (b"task=" + b"x" * 20_000, "Query string longer"),
    (b"task=a%00b", "A task value contains a NUL character"),
    (b"label=tenant:a%00", "A label value contains a NUL character"),
    (b"status=running%00", "A status value contains a NUL character"),
])
def test_bad_filters_are_refused_with_a_reason(qs, reason):
    with pytest.raises(BadStreamRequest, match=reason.replace("(", r"\(").replace(")", r"\)")):
        sse_query.parse(qs)


@pytest.mark.parametrize("raw, parsed", [
    ("12", 12), (" 12 ", 12), ("0", 0), ("abc", None), ("-1", None), ("1e3", None),
    ("", None), (None, None), ("٣", None), (str(2**64), None), (str(2**63 - 1), 2**63 - 1),
    ("9" * 15_000, None), ("1" * 20, None), ("1\x00", None),
])
def test_last_event_id_parsing(raw, parsed):
    assert sse_query.parse_event_id(raw) == parsed


def test_status_filter_still_delivers_status_changes_out_of_the_filtered_status():
    query = StreamQuery(tasks=frozenset({"t"}), statuses=frozenset({"running"}))
    assert query.matches("progress", {"task": "t", "status": "running"})
    assert not query.matches("progress", {"task": "t", "status": "pending"})
    assert not query.matches("created", {"task": "t", "status": "pending"})
    assert query.matches("status", {"task": "t", "status": "completed"})  # leaves the filter
    assert not query.matches("status", {"task": "other", "status": "running"})


@pytest.mark.django_db
def test_default_authorization_follows_the_view_permissions():
    root = User(pk=1, username="s", is_superuser=True)
    user = User.objects.create_user("u")
    bare_staff = User.objects.create_user("staff", is_staff=True)
    assert authz.default_authorize(root, {}) == Access()
    assert authz.default_authorize(user, {}) == Access(owner_id=user.pk)
    assert authz.default_authorize(bare_staff, {}) == Access(owner_id=bare_staff.pk)
    for codename in ("view_run", "change_run"):
        viewer = grant(User.objects.create_user(codename), codename)
        assert authz.default_authorize(viewer, {}) == Access()
    assert authz.default_authorize(AnonymousUser(), {}) is None
    assert Access(owner_id=2).allows(2, {}) and not Access(owner_id=2).allows(3, {})
    assert not Access(labels={"tenant": "a"}).allows(None, {"labels": {"tenant": "b"}})


def only_tenant_a(user: Any, scope: dict[str, Any]) -> Access:
    return Access(labels={"tenant": "a"})


@override_settings(TASKS_LIVE={"SSE_AUTHORIZE": "tests.test_sse.only_tenant_a"})
def test_sse_authorize_setting_names_the_callable():
    assert authz.stream_access(AnonymousUser(), {}) == Access(labels={"tenant": "a"})


# ---------------------------------------------------------------- fan-out pieces


def test_mailbox_overflow_drops_everything_and_flags_a_catch_up():
    async def scenario():
        box = Mailbox(size=3)
        box.put(Batch(0, 2, [object(), object()]))  # type: ignore[list-item]
        box.put(Batch(2, 4, [object(), object()]))  # type: ignore[list-item]
        await asyncio.wait_for(box.wait(), 1)
        assert box.take() == ([], True, False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(box.wait(), 0.05)
        box.nudge()
        await asyncio.wait_for(box.wait(), 1)
        assert box.take() == ([], False, True)

    asyncio.run(scenario())


class FakeEvent:
    def __init__(self, pk: int) -> None:
        self.pk = pk


def test_hub_holds_at_an_id_hole_until_it_fills_or_nothing_can_fill_it(monkeypatch):
    writers = {"3/17"}  # a transaction writing events (PostgreSQL's pg_locks says which)
    monkeypatch.setattr(store, "event_writers", lambda: frozenset(writers))

    async def scenario():
        hub = Hub()
        hub._ordered = False  # PostgreSQL: ids may commit out of order
        evs = [FakeEvent(i) for i in (11, 12, 14, 15)]
        assert [e.pk for e in hub._contiguous(10, evs)] == [11, 12]  # 13 not committed yet
        filled = [FakeEvent(i) for i in (13, 14, 15)]
        assert [e.pk for e in hub._contiguous(12, filled)] == [13, 14, 15]
        assert [e.pk for e in hub._contiguous(12, evs[2:])] == []  # a new hole at 13
        writers.add("4/2")  # began after the hole was seen: its ids are all newer
        hub._recheck_hole()
        assert [e.pk for e in hub._contiguous(12, evs[2:])] == []  # 3/17 may still commit 13
        writers.discard("3/17")  # it ended; the next read decides
        hub._recheck_hole()
        assert [e.pk for e in hub._contiguous(12, evs[2:])] == [14, 15]  # rolled back: skip
        assert hub._hole is None
        hub._reader.shutdown()

    asyncio.run(scenario())


def msg(event_id: int) -> dict[str, Any]:
    """A channel-layer message for a status event of run 1."""
    return events.message(event_id, "status", {"id": 1, "task": "t", "status": "running"})


def test_hub_delivers_layer_messages_that_continue_its_cursor_and_reads_after_a_gap():
    async def scenario():
        hub = Hub()
        hub.cursor = 10
        box = Mailbox(100)
        hub.mailboxes.add(box)
        for event_id in (9, 11, 12, 14):
            hub.on_message(msg(event_id))
        assert hub._deliver_pending() is True  # 13 is missing: the database decides
        assert hub.cursor == 12
        await hub._flush_outbox()
        [batch], overflowed, _ = box.take()
        assert not overflowed
        assert (batch.after, batch.upto, [i.event_id for i in batch.items]) == (10, 12, [11, 12])
        hub.on_message(msg(13))
        assert hub._deliver_pending() is False and hub.cursor == 13
        # A worker's commit arrives as one batch message carrying all of its events.
        hub.on_message({"type": events.BATCH_TYPE, "messages": [msg(14), msg(15), "junk"]})
        assert hub._deliver_pending() is False and hub.cursor == 15
        hub._reader.shutdown()

    asyncio.run(scenario())


def test_hub_puts_a_rounds_entries_in_order_into_every_mailbox_a_chunk_per_loop_turn():
    async def scenario():
        hub = Hub()
        hub.cursor = 10
        boxes = [Mailbox(100) for _ in range(fanout.WAKE_CHUNK * 2 + 1)]
        hub.mailboxes.update(boxes)
        hub.on_message(msg(11))
        hub._deliver_pending()
        hub.on_message(msg(12))
        hub._deliver_pending()
        flush = asyncio.create_task(hub._flush_outbox())
        await asyncio.sleep(0)  # the first chunk only
        first = [box for box in boxes if box.take()[0]]
        assert len(first) == fanout.WAKE_CHUNK
        late = Mailbox(100)  # joins mid-round: its cursor is already the hub's
        hub.mailboxes.add(late)
        await flush
        assert late.take()[0] == []
        for box in boxes:
            entries, overflowed, _ = box.take()
            expected = [] if box in first else [(10, 11), (11, 12)]
            assert [(b.after, b.upto) for b in entries] == expected
            assert not overflowed
        hub._reader.shutdown()

    asyncio.run(scenario())


def test_a_stream_takes_a_round_directly_only_while_idle_and_caught_up():
    def item(event_id: int) -> fanout.Item:
        return fanout.item_from_message(
            events.message(event_id, "status", {"id": 1, "task": "t", "status": "running"}))

    async def scenario():
        sent: list[bytes] = []

        async def send(body: bytes, more_body: bool) -> None:
            sent.append(body)

        hub, box = Hub(), Mailbox(100)
        hub.mailboxes.add(box)
        query, _ = sse_query.parse(b"")
        stream = Stream(send, hub, box, query, Access())
        stream.cursor = 10
        box.direct = stream.push  # what Stream.run does while it waits
        hub._outbox.append(Batch(10, 11, [item(11)]))
        await hub._flush_outbox()
        assert sent == [item(11).frame] and stream.cursor == 11
        assert box.take() == ([], False, False) and box.direct is not None
        # A batch after a gap needs the task (it reads the gap from the database), and
        # nothing may overtake it, not even a push-only preview.
        late = Batch(12, 13, [item(13)])
        preview = fanout.item_from_push({"id": 1, "task": "t", "status": "running"}, None)
        hub._outbox.append(late)
        await hub._flush_outbox()
        hub._outbox.append(preview)
        await hub._flush_outbox()
        assert len(sent) == 1 and stream.cursor == 11 and box.direct is None
        assert box.take()[0] == [late, preview]
        hub._reader.shutdown()

    asyncio.run(scenario())


def test_a_send_stalled_on_its_client_holds_one_joined_write_not_a_copy_of_the_round():
    pad = "x" * 900
    items = [fanout.item_from_message(events.message(
        n, "status", {"id": n, "task": "t", "status": "running", "progress": {"message": pad}}))
        for n in range(1, 2001)]  # ~2 MB of frames: a round of a burst

    async def scenario():
        client_reads = asyncio.get_running_loop().create_future()  # never: a stalled client
        sent: list[int] = []

        async def send(body: bytes, more_body: bool) -> None:
            sent.append(len(body))
            await client_reads

        box = Mailbox(10_000)
        query, _ = sse_query.parse(b"")
        stream = Stream(send, Hub(), box, query, Access())
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            assert stream.push(items)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert stream.unfinished is not None  # the first write waits on the client
        assert len(sent) == 1 and sent[0] <= sse.JOIN_LIMIT
        # The round's frames are shared by every stream; this one holds a write's worth.
        assert held < 2 * sse.JOIN_LIMIT, held
        stream.unfinished.close()
        client_reads.cancel()
        box.direct = None

    asyncio.run(scenario())


# ---------------------------------------------------------------- the consumer over ASGI


class Client:
    """One stream request against the consumer, in this process."""

    def __init__(self, query: str = "", user: Any = None, last_event_id: str | None = None,
                 method: str = "GET") -> None:
        headers = [(b"last-event-id", last_event_id.encode())] if last_event_id else []
        scope = {"type": "http", "method": method, "path": "/tasks/events/",
                 "query_string": query.encode(), "headers": headers,
                 "user": user or AnonymousUser()}
        self.comm = ApplicationCommunicator(EventStreamConsumer.as_asgi(), scope)
        self.parser = FrameParser()
        self.events: list[Event] = []
        self.body = b""
        self.closed = False

    async def start(self) -> dict[str, Any]:
        await self.comm.send_input({"type": "http.request", "body": b""})
        return await self.comm.receive_output(5)

    async def read_until(self, predicate: Any, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                raise AssertionError(f"not seen; got {[(e.event, e.id) for e in self.events]}")
            self._take(await self.comm.receive_output(remaining))
        return self.events

    def _take(self, msg: dict[str, Any]) -> None:
        self.body += msg.get("body", b"")
        self.events += self.parser.feed(msg.get("body", b""))
        self.closed = not msg.get("more_body", False)

    async def collect(self, duration: float) -> None:
        """Read whatever arrives for ``duration`` seconds (without timing out the app)."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline and not self.closed:
            if not await self.comm.receive_nothing(0.05):
                self._take(await self.comm.receive_output(5))

    async def close(self) -> None:
        await self.comm.send_input({"type": "http.disconnect"})
        await self.comm.wait(5)

    def runs(self) -> list[Event]:
        return [e for e in self.events if e.event == "run"]


def has(kind: str, count: int = 1):
    return lambda events: sum(e.event == kind for e in events) >= count


def finished(run_id: int):
    return lambda events: any(
        e.event == "run" and e.run["id"] == run_id and e.run["status"] == "completed"
        for e in events)


def execute_in_thread(run_id: int) -> Any:
    def work() -> None:
        try:
            runner.execute(run_id)
        finally:
            close_old_connections()

    return asyncio.to_thread(work)


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(db):
    return operator()


@pytestmark_db
def test_snapshot_then_live_events_in_id_order_to_the_terminal_state(staff):
    old = tasks_live.start("add", a=1, b=2)

    async def scenario():
        client = Client("task=import-data,add", staff)
        start = await client.start()
        assert start["status"] == 200
        assert dict(start["headers"])[b"Content-Type"] == b"text/event-stream"
        assert dict(start["headers"])[b"Cache-Control"] == b"no-cache"
        assert dict(start["headers"])[b"X-Accel-Buffering"] == b"no"
        await client.read_until(has("snapshot"))
        run = await asyncio.to_thread(lambda: tasks_live.start("import-data", rows=5))
        await execute_in_thread(run.pk)
        await client.read_until(finished(run.pk))
        await client.close()
        return client, run

    client, run = asyncio.run(scenario())
    retry, snapshot = client.events[:2]
    assert (retry.event, retry.data) == ("retry", 2000)
    assert [r["id"] for r in snapshot.data["runs"]] == [old.pk]
    assert snapshot.id == snapshot.data["last_event_id"] == RunEvent.objects.get(run=old.pk).pk
    ids = [e.id for e in client.runs()]
    assert ids == sorted(set(ids)) and ids[0] > snapshot.id
    assert ids == list(RunEvent.objects.filter(run=run.pk).values_list("id", flat=True))
    kinds = [e.data["kind"] for e in client.runs()]
    assert kinds[:2] == ["created", "status"] and kinds[-1] == "status"
    assert client.runs()[-1].run["result"] == {"imported": 5}
    assert client.runs()[-1].run["progress"]["percent"] == 100.0


@pytestmark_db
def test_reconnect_with_last_event_id_replays_exactly_the_missed_events(staff):
    runs = [tasks_live.start("add", a=i, b=1) for i in range(3)]
    for run in runs:
        runner.execute(run.pk)
    all_ids = list(RunEvent.objects.order_by("id").values_list("id", flat=True))
    cut = all_ids[3]

    async def scenario(**kwargs):
        client = Client(user=staff, **kwargs)
        await client.start()
        await client.read_until(lambda ev: [e.id for e in client.runs()] == all_ids[4:])
        await client.collect(0.3)  # and nothing more arrives
        await client.close()
        return client

    by_header = asyncio.run(scenario(last_event_id=str(cut)))
    by_query = asyncio.run(scenario(query=f"last_event_id={cut}"))
    for client in (by_header, by_query):
        assert [e.event for e in client.events] == ["retry"] + ["run"] * len(all_ids[4:])
        assert [e.id for e in client.runs()] == all_ids[4:]


@pytestmark_db
@pytest.mark.parametrize("last_event_id, reason", [
    ("not-a-number", "Malformed Last-Event-ID"),
    ("9" * 15_000, "Malformed Last-Event-ID '" + "9" * 40),  # int() would raise
    ("999999", "newer than any stored event"),
    ("1", "older than the retained events"),
])
def test_unusable_last_event_id_gets_a_reset_and_a_fresh_snapshot(staff, last_event_id, reason):
    for _ in range(3):
        runner.execute(tasks_live.start("add", a=1, b=1).pk)
    RunEvent.objects.filter(pk__lte=3).delete()  # retention pruned the oldest events

    async def scenario():
        client = Client(user=staff, last_event_id=last_event_id)
        assert (await client.start())["status"] == 200
        await client.read_until(has("snapshot"))
        await client.close()
        return client

    client = asyncio.run(scenario())
    assert [e.event for e in client.events] == ["retry", "reset", "snapshot"]
    assert reason in client.events[1].data["reason"]
    assert len(client.events[2].data["runs"]) == 3
    # Current to the newest event (on PostgreSQL a just-started stream process may still
    # be waiting out a young id hole, so its snapshot can be a little older).
    assert client.events[2].id == client.events[2].data["last_event_id"]
    assert client.events[2].id <= store.latest_event_id()
    if connection.vendor == "sqlite":
        assert client.events[2].id == store.latest_event_id()


@pytestmark_db
def test_a_snapshot_of_an_empty_event_log_can_be_resumed_from(staff):
    """Every event pruned (retention, or a flushed database): the snapshot carries the last
    id handed out, not 0, so a client back with it replays what followed instead of being
    refused as older than the oldest event (a reset, and a snapshot of only 100 runs)."""
    for _ in range(3):
        runner.execute(tasks_live.start("add", a=1, b=1).pk)
    handed_out = store.latest_event_id()
    RunEvent.objects.all().delete()

    async def scenario():
        first = Client(user=staff)
        await first.start()
        await first.read_until(has("snapshot"))
        await first.close()
        run = await asyncio.to_thread(lambda: tasks_live.start("add", a=2, b=2))
        await execute_in_thread(run.pk)
        back = Client(user=staff, last_event_id=str(first.events[1].id))
        await back.start()
        await back.read_until(finished(run.pk))
        await back.close()
        return first, back, run

    first, back, run = asyncio.run(scenario())
    assert first.events[1].event == "snapshot" and first.events[1].id == handed_out
    assert [e.event for e in back.events] == ["retry"] + ["run"] * len(back.runs())
    assert [e.id for e in back.runs()] == list(
        RunEvent.objects.filter(run=run.pk).order_by("id").values_list("id", flat=True))


@pytestmark_db
def test_owner_sees_own_runs_stranger_sees_none_anonymous_is_refused(staff):
    owner = User.objects.create_user("owner")
    stranger = User.objects.create_user("stranger")
    mine = tasks_live.using(owner=owner).start("add", a=1, b=2)
    tasks_live.start("add", a=5, b=5)  # nobody's

    async def watch(user):
        client = Client(user=user)
        start = await client.start()
        if start["status"] != 200:
            await client.read_until(lambda ev: client.closed)
            await client.close()
            return start["status"], client
        await client.read_until(has("snapshot"))
        await execute_in_thread(mine.pk)
        await client.collect(1.0)  # two poll intervals: anything visible has arrived
        await client.close()
        return 200, client

    status, anonymous = asyncio.run(watch(None))
    assert status == 403 and b"log in" in anonymous.body
    status, as_owner = asyncio.run(watch(owner))
    assert [r["id"] for r in as_owner.events[1].data["runs"]] == [mine.pk]
    assert {e.run["id"] for e in as_owner.runs()} == {mine.pk}
    assert as_owner.runs()[-1].run["status"] == "completed"
    status, as_stranger = asyncio.run(watch(stranger))
    assert as_stranger.events[1].data["runs"] == [] and as_stranger.runs() == []


@pytestmark_db
def test_bad_requests_get_400_or_405_with_a_plain_text_reason(staff):
    async def ask(**kwargs):
        client = Client(user=staff, **kwargs)
        start = await client.start()
        await client.read_until(lambda ev: client.closed)
        await client.close()  # daphne sends http.disconnect once a response is complete
        return start["status"], client.body.decode()

    assert asyncio.run(ask(query="status=nope")) == (
        400, "Unknown status 'nope'; use one of pending, claimed, running, retrying, cancel_requested, "
        "completed, failed, canceled, timed_out, skipped.")
    status, body = asyncio.run(ask(method="POST"))
    assert status == 405 and "only answers GET" in body


def execute_all(count: int) -> int:
    """Start and execute ``count`` runs one after another; the id of the last event."""
    try:
        for run in [tasks_live.start("add", a=i, b=0) for i in range(count)]:
            runner.execute(run.pk)
        return store.latest_event_id()
    finally:
        close_old_connections()


@pytestmark_db
@override_settings(TASKS_LIVE={"SSE_QUEUE_SIZE": 2, "SSE_HEARTBEAT_INTERVAL": 0.1})
def test_a_slow_stream_that_overflows_its_mailbox_catches_up_from_the_database(
    staff, monkeypatch
):
    overflows = []
    take = Mailbox.take

    def spy(self: Mailbox) -> Any:
        entries, overflowed, heartbeat = take(self)
        overflows.append(overflowed)
        return entries, overflowed, heartbeat

    monkeypatch.setattr(Mailbox, "take", spy)
    send_body = EventStreamConsumer.send_body
    stuck, unstick = asyncio.Event(), asyncio.Event()

    async def slow_reader(self: EventStreamConsumer, body: bytes, **kwargs: Any) -> None:
        # The client stops reading and the server applies backpressure: the first send
        # of live events (the hub starts it) suspends until the test lets it go on.
        if b"event: run" in body and not unstick.is_set():
            stuck.set()
            await unstick.wait()
        await send_body(self, body, **kwargs)

    monkeypatch.setattr(EventStreamConsumer, "send_body", slow_reader)
    resumed = []
    resume = sse._resume

    def spy_resume(*args: Any) -> Any:
        resumed.append(args)
        return resume(*args)

    monkeypatch.setattr(sse, "_resume", spy_resume)

    async def scenario():
        client = Client(user=staff)
        await client.start()
        await client.read_until(has("snapshot"))
        await asyncio.to_thread(execute_all, 1)
        await asyncio.wait_for(stuck.wait(), 5)
        target = await asyncio.to_thread(execute_all, 10)  # the hub outpaces this stream
        [hub] = fanout._hubs.values()
        deadline = time.monotonic() + 5
        while not any(box.overflowed for box in hub.mailboxes) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        unstick.set()
        await client.read_until(lambda ev: any(e.id == target for e in client.runs()))
        await client.read_until(has("comment"))  # heartbeats while idle
        await client.close()
        return client

    client = asyncio.run(scenario())
    snapshot_id = client.events[1].id
    ids = [e.id for e in client.runs()]
    assert ids == list(RunEvent.objects.filter(pk__gt=snapshot_id).values_list("id", flat=True))
    assert any(overflows)
    assert resumed  # a send the hub started and the server suspended, finished by the task
    assert any(e.event == "comment" and e.data == "heartbeat" for e in client.events)


@pytestmark_db
def test_a_live_send_that_raises_ends_only_that_stream(staff, monkeypatch):
    send_body = EventStreamConsumer.send_body

    async def breaks_on_live_events(self: EventStreamConsumer, body: bytes, **kwargs: Any) -> None:
        if self.scope["query_string"] == b"task=add" and b"event: run" in body:
            raise RuntimeError("the connection broke")
        await send_body(self, body, **kwargs)

    monkeypatch.setattr(EventStreamConsumer, "send_body", breaks_on_live_events)

    async def scenario():
        broken, healthy = Client("task=add", staff), Client("", staff)
        for client in (broken, healthy):
            await client.start()
            await client.read_until(has("snapshot"))
        first = await asyncio.to_thread(lambda: tasks_live.start("add", a=1, b=2))
        await broken.read_until(lambda ev: broken.closed)
        second = await asyncio.to_thread(lambda: tasks_live.start("add", a=3, b=4))
        await execute_in_thread(second.pk)
        await healthy.read_until(finished(second.pk))
        await healthy.close()
        await broken.close()
        return broken, healthy, first, second, dict(fanout._hubs)

    broken, healthy, first, second, hubs = asyncio.run(scenario())
    assert broken.closed and broken.runs() == []
    assert {e.run["id"] for e in healthy.runs()} == {first.pk, second.pk}
    assert hubs == {}


@pytestmark_db
def test_an_exception_in_the_stream_ends_it_cleanly_and_frees_the_hub(staff, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("snapshot query failed")

    monkeypatch.setattr(store, "snapshot", broken)

    async def scenario():
        client = Client(user=staff)
        start = await client.start()
        await client.read_until(lambda ev: client.closed)
        await client.close()
        return start, client, dict(fanout._hubs)

    start, client, hubs = asyncio.run(scenario())
    assert start["status"] == 200  # headers were out: the body just ends, no 500
    assert client.closed and client.events == []
    assert hubs == {}


@pytestmark_db
def test_a_hub_whose_event_loop_is_gone_never_breaks_a_commit():
    async def abandon() -> Hub:
        hub = Hub()
        hub.start()
        await asyncio.sleep(0.1)  # the in-memory layer: it listens to local commits
        return hub

    hub = asyncio.run(abandon())  # the loop closes without the hub being stopped
    assert hub._on_local_message in events._local_listeners
    run = tasks_live.start("add", a=1, b=2)  # pushes to the dead hub after commit
    assert store.get_run(run.pk).status == "pending"
    assert hub._on_local_message not in events._local_listeners
    hub._reader.shutdown()


@requires_postgres
@pytestmark_db
def test_postgres_out_of_order_commits_are_delivered_in_id_order(staff):
    """Transaction A takes event id N, B takes N+1 and commits first: the stream must
    not deliver N+1 before N (nor skip N), so it waits for the hole to fill."""
    inserted, release = threading.Event(), threading.Event()

    def slow_writer() -> int:
        try:
            with transaction.atomic():
                run = tasks_live.start("add", a=1, b=1)
                inserted.set()
                release.wait(10)
            return run.pk
        finally:
            close_old_connections()

    def fast_writer() -> int:
        try:
            return tasks_live.start("add", a=2, b=2).pk
        finally:
            close_old_connections()

    async def scenario():
        client = Client(user=staff)
        await client.start()
        await client.read_until(has("snapshot"))
        slow = asyncio.create_task(asyncio.to_thread(slow_writer))
        await asyncio.to_thread(inserted.wait, 10)
        fast_id = await asyncio.to_thread(fast_writer)
        await client.collect(0.4)  # B is committed, but A's lower id is still open
        early = list(client.runs())
        release.set()
        slow_id = await slow
        await client.read_until(lambda ev: len(client.runs()) == 2)
        await client.close()
        return client, early, slow_id, fast_id

    client, early, slow_id, fast_id = asyncio.run(scenario())
    assert early == []
    assert [(e.run["id"], e.data["kind"]) for e in client.runs()] == [
        (slow_id, "created"), (fast_id, "created")]
    assert client.runs()[0].id < client.runs()[1].id


def test_system_check_explains_the_in_memory_layer_trade_off():
    from django_tasks_live.checks import check_stream_layer

    [info] = check_stream_layer()
    assert info.id == "tasks_live.I010" and "polling RunEvent every 0.5 s" in info.msg
    redis = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                         "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]}}}
    from channels.layers import channel_layers

    with override_settings(CHANNEL_LAYERS=redis):
        channel_layers.backends.clear()
        try:
            assert check_stream_layer() == []
        finally:
            channel_layers.backends.clear()


@pytestmark_db
def test_a_disconnect_frees_the_stream_and_the_last_one_stops_the_hub(staff):
    async def scenario():
        clients = [Client(user=staff) for _ in range(2)]
        for client in clients:
            await client.start()
            await client.read_until(has("snapshot"))
        [hub] = fanout._hubs.values()
        assert len(hub.mailboxes) == 2
        await clients[0].close()
        assert len(hub.mailboxes) == 1
        await clients[1].close()
        return hub

    hub = asyncio.run(scenario())
    assert fanout._hubs == {} and not hub.mailboxes
    assert all(task.done() for task in hub._tasks)


def test_asgi_helpers_route_the_stream_path_and_leave_the_rest_to_django():
    from channels.routing import URLRouter
    from django.urls import re_path

    from django_tasks_live.asgi import stream_route, tasks_live_application

    async def django_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async def get(app, path):
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                 "headers": []}
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": b""})
        start = await comm.receive_output(5)
        await comm.receive_output(5)
        await comm.send_input({"type": "http.disconnect"})  # as daphne does after a response
        await comm.wait(5)
        return start["status"]

    async def scenario():
        app = tasks_live_application(django_app)
        router = URLRouter([stream_route(), re_path(r"", django_app)])
        return [await get(app, "/tasks/events/"), await get(app, "/tasks/events"),
                await get(app, "/tasks/"), await get(router, "/tasks/events/"),
                await get(router, "/admin/")]

    # Anonymous: the stream answers 403; everything else is Django's.
    assert asyncio.run(scenario()) == [403, 403, 299, 403, 299]


def tenant_access(user: Any, scope: dict[str, Any]) -> Access | None:
    """The README's label-based authorization: staff see every run, a user the runs of
    their tenant (here the user name stands for the tenant)."""
    if not user.is_authenticated:
        return None
    return Access() if user.is_staff else Access(labels={"tenant": user.username})


@pytestmark_db
@override_settings(TASKS_LIVE={"SSE_AUTHORIZE": "tests.test_sse.tenant_access",
                               "SSE_POLL_INTERVAL": 0.1})
def test_label_filters_and_label_based_authorization(staff):
    acme = User.objects.create_user("acme")
    eu, us, globex = {"tenant": "acme", "region": "eu"}, {"tenant": "acme", "region": "us"}, {
        "tenant": "globex"}

    def start_each():
        return [tasks_live.using(labels=labels).start("add", a=1, b=1) for labels in (eu, us, globex)]

    def names(states):
        return {"/".join(sorted(state["labels"].values())) for state in states}

    start_each()  # for the snapshots

    async def watch(user, query):
        client = Client(query, user)
        assert (await client.start())["status"] == 200
        await client.read_until(has("snapshot"))
        for run in await asyncio.to_thread(start_each):  # live events
            await execute_in_thread(run.pk)
        await client.collect(0.5)  # several poll intervals: anything visible has arrived
        await client.close()
        return names(client.events[1].data["runs"]), names(e.run for e in client.runs())

    assert asyncio.run(watch(acme, "")) == ({"acme/eu", "acme/us"}, {"acme/eu", "acme/us"})
    assert asyncio.run(watch(acme, "label=region:eu")) == ({"acme/eu"}, {"acme/eu"})
    # Asking for another tenant's runs shows nothing, not an error that confirms them.
    assert asyncio.run(watch(acme, "label=tenant:globex")) == (set(), set())
    assert asyncio.run(watch(staff, "label=tenant:globex")) == ({"globex"}, {"globex"})
