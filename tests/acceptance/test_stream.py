"""The live stream end to end: a real daphne, a real ``tasks_worker``, HTTP streaming clients.

Runs are started here (the web side), executed by the worker process, and watched
through daphne; every persisted event must reach every client allowed to see it, in id
order, exactly once, whatever the channel layer does.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client as DjangoClient

import django_tasks_live as tasks_live
from django_tasks_live.models import RunEvent
from tests.support.db import requires_redis
from tests.support.processes import children, daphne_args, free_port, wait_until, worker_args
from tests.support.sse import StreamReader, wait_status
from tests.support.users import operator

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def session_cookie(user: User) -> dict[str, str]:
    client = DjangoClient()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def start_daphne(spawn, **env: str) -> str:
    return daphne(spawn, **env)[0]


def daphne(spawn, **env: str):
    """A daphne child serving the test project: (stream URL, the Child)."""
    port = free_port()
    child = spawn(daphne_args(port), **env)
    url = f"http://127.0.0.1:{port}/tasks/events/"

    def answers() -> bool:
        assert child.proc.poll() is None, child.output()
        try:
            return httpx.get(url, timeout=1).status_code == 403  # anonymous
        except httpx.TransportError:
            return False

    wait_until(answers, 30, f"daphne on port {port}")
    return url, child


def start_worker(spawn, **env: str) -> None:
    spawn(worker_args("--concurrency", "1"), **env).wait_for_output("tasks_worker ready", 30)


def event_ids(run_id: int) -> list[int]:
    return list(RunEvent.objects.filter(run=run_id).order_by("id").values_list("id", flat=True))


def ids_of(reader: StreamReader, run_id: int) -> list[int]:
    return [e.id for e in reader.run_events() if e.run["id"] == run_id]


def finished(run_id: int):
    return lambda events: any(
        e.event == "run" and e.run["id"] == run_id and e.run["status"] == "completed"
        for e in events
    )


def test_live_progress_replay_and_authorization_through_daphne_and_a_worker(tmp_path):
    staff = operator()
    owner = User.objects.create_user("owner")
    stranger = User.objects.create_user("stranger")
    bare_staff = User.objects.create_user("bare", is_staff=True)  # no permission: like a stranger
    with children(tmp_path) as spawn:
        url = start_daphne(spawn, TASKS_LIVE_SSE_HEARTBEAT="0.3")
        start_worker(spawn)
        full = StreamReader(url, cookies=session_cookie(staff))
        watched = StreamReader(url + "?task=import-data", cookies=session_cookie(owner))
        other = StreamReader(url, cookies=session_cookie(stranger))
        bare = StreamReader(url, cookies=session_cookie(bare_staff))
        anonymous = StreamReader(url)
        dropping = StreamReader(url, cookies=session_cookie(staff))
        for reader in (full, watched, other, bare, dropping):
            reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")

        run = tasks_live.using(owner=owner).start("import-data", rows=40, delay=0.03)
        # One client drops off mid-run and comes back with the last id it saw.
        dropping.wait_for(lambda ev: any(e.event == "run" and e.data["kind"] == "progress"
                                         for e in ev), what="first progress")
        dropping.close()
        seen_before = ids_of(dropping, run.pk)
        time.sleep(0.3)
        back = StreamReader(url, cookies=session_cookie(staff),
                            headers={"Last-Event-ID": str(seen_before[-1])})
        for reader in (full, watched):
            reader.wait_for(finished(run.pk), 30, "the run's completion")
        expected = event_ids(run.pk)
        # The dropped client may have seen more than one event before it went (a batch).
        back.wait_for(lambda ev: seen_before + ids_of(back, run.pk) == expected, 30,
                      "the missed events")
        for reader in (other, bare):
            reader.wait_for(lambda ev: sum(e.event == "comment" for e in ev) >= 2, what="heartbeats")
        assert wait_status(anonymous) == 403

        # Bad and stale Last-Event-IDs get a reset and a fresh snapshot, never an error.
        malformed = StreamReader(url + "?last_event_id=xyz", cookies=session_cookie(staff))
        future = StreamReader(url, cookies=session_cookie(staff),
                              headers={"Last-Event-ID": "987654321"})
        for reader in (malformed, future):
            reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
        for reader in (full, watched, other, bare, back, anonymous, malformed, future):
            reader.close()

    assert ids_of(full, run.pk) == expected  # every event, in order, once
    assert seen_before + ids_of(back, run.pk) == expected  # exactly the missed ones
    assert back.events[0].event == "retry"
    assert "snapshot" not in [e.event for e in back.events]  # a replay, not a reset
    assert ids_of(watched, run.pk) == expected  # the owner sees their run
    # (the worker also fires the test app's every-minute schedule: look at this run only)
    last = [e.run for e in full.run_events() if e.run["id"] == run.pk][-1]
    assert last["status"] == "completed" and last["result"] == {"imported": 40}
    assert last["progress"]["percent"] == 100.0
    percents = [e.run["progress"]["percent"] for e in full.events
                if e.event in ("run", "progress") and e.run["id"] == run.pk
                and e.run["progress"]["percent"] is not None]
    assert percents == sorted(percents) and len(percents) > 5  # it moved, never backwards
    for reader in (other, bare):
        assert reader.run_events() == [] and reader.events[1].data["runs"] == []
    assert b"log in" in anonymous.body
    for reader in (malformed, future):
        assert [e.event for e in reader.events[:3]] == ["retry", "reset", "snapshot"]
        assert reader.events[2].data["runs"][0]["status"] == "completed"
    assert full.headers["content-type"] == "text/event-stream"
    assert full.headers["cache-control"] == "no-cache"
    assert full.headers["x-accel-buffering"] == "no"


def redis_env(layer: str, poll: str) -> dict[str, str]:
    # Heartbeats every 0.3 s also let the readers notice close() promptly.
    return {"TASKS_LIVE_CHANNEL_LAYER": layer, "TASKS_LIVE_SSE_POLL": poll,
            "TASKS_LIVE_SSE_HEARTBEAT": "0.3",
            "TASKS_LIVE_REDIS_PREFIX": f"tl-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"}


@requires_redis
def test_redis_layer_two_daphnes_one_worker_both_streams_get_every_event(tmp_path):
    staff = operator()
    # Polling every 30 s: delivery within the test's time can only come through Redis.
    env = redis_env("redis", poll="30")
    with children(tmp_path) as spawn:
        urls = [start_daphne(spawn, **env), start_daphne(spawn, **env)]
        start_worker(spawn, **env)
        readers = [StreamReader(u, cookies=session_cookie(staff)) for u in urls]
        for reader in readers:
            reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
        runs = [tasks_live.start("import-data", rows=20, delay=0.02) for _ in range(3)]
        for run in runs:
            tasks_live.wait(run.pk, timeout=30)
        done = time.monotonic()
        for reader in readers:
            for run in runs:
                reader.wait_for(finished(run.pk), 10, "completion via Redis")
        latency = time.monotonic() - done
        for reader in readers:
            reader.close()
    assert latency < 5  # far below the 30 s poll: the layer delivered
    for reader in readers:
        for run in runs:
            assert ids_of(reader, run.pk) == event_ids(run.pk)
        assert any(e.event == "progress" for e in reader.events)  # push-only previews too


@requires_redis
def test_a_channel_layer_that_drops_messages_still_delivers_every_event(tmp_path):
    staff = operator()
    env = redis_env("redis-drop", poll="1")
    with children(tmp_path) as spawn:
        url = start_daphne(spawn, **env)
        start_worker(spawn, **env)
        reader = StreamReader(url, cookies=session_cookie(staff))
        reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
        runs = [tasks_live.start("import-data", rows=15, delay=0.01) for _ in range(4)]
        for run in runs:
            reader.wait_for(finished(run.pk), 30, "completion despite drops")
        reader.close()
    all_ids = [e.id for e in reader.run_events()]
    assert all_ids == sorted(set(all_ids))
    for run in runs:
        assert ids_of(reader, run.pk) == event_ids(run.pk)
