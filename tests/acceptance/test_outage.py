"""A database outage under load: two workers and a daphne stream, on both databases.

PostgreSQL goes away through a TCP proxy the test cuts (every connection of the
workers and of daphne is dropped, new ones refused); SQLite is locked by a connection
holding ``BEGIN EXCLUSIVE``. Afterwards every run has run exactly once and completed,
the workers and daphne are still up, and a client that reconnects as an EventSource
does (``Last-Event-ID``) has seen every event of every run, in order, once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import RunEvent
from django_tasks_live.states import TERMINAL, Status
from tests.acceptance.test_stream import daphne, session_cookie
from tests.conftest import read_calls
from tests.support.db import requires_postgres
from tests.support.processes import children, wait_until, worker_args
from tests.support.sse import StreamReader
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

# Heartbeats every 0.3 s: the reader notices close() promptly.
# The hub's INFO lines (holes it skipped) go to daphne's log, shown on a failure.
STREAM_ENV = {"TASKS_LIVE_SSE_HEARTBEAT": "0.3", "TASKS_LIVE_LOG_LEVEL": "INFO"}


def load(first: int, total: int) -> list[int]:
    """``total`` tally runs numbered from ``first``; every tenth reports progress for ~1 s."""
    runs = tasks_live.start_many([
        ("tally", {"n": n, "count": 20, "delay": 0.05} if n % 10 == 0 else {"n": n})
        for n in range(first, first + total)
    ])
    return [run.pk for run in runs]


def finished_count(run_ids: list[int]) -> int:
    return store.runs(run_ids=run_ids).filter(status__in=sorted(TERMINAL)).count()


def events_by_run(run_ids: list[int]) -> dict[int, list[int]]:
    ids: dict[int, list[int]] = {run_id: [] for run_id in run_ids}
    for run_id, event_id in RunEvent.objects.filter(run__in=run_ids).order_by("id").values_list(
            "run_id", "id"):
        ids[run_id].append(event_id)
    return ids


def seen_by_run(reader: StreamReader, run_ids: list[int]) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {run_id: [] for run_id in run_ids}
    for event in reader.run_events():
        if event.run["id"] in seen:
            seen[event.run["id"]].append(event.id)
    return seen


def describe_missed(client: StreamReader, missed: dict[int, list[int]]) -> str:
    """The missed events (id, run, kind, created_at) and what the client saw around them."""
    ids = sorted(i for run_ids in missed.values() for i in run_ids)
    rows = RunEvent.objects.filter(pk__in=ids).order_by("id").values_list(
        "id", "run_id", "kind", "created_at")
    seen = [e.id for e in client.run_events()]
    lines = [f"missed {i} (run {r}, {k}, written {c:%H:%M:%S.%f})" for i, r, k, c in rows][:5]
    if ids:
        below = [i for i in seen if i < ids[0]][-3:]
        above = [i for i in seen if i > ids[-1]][:3]
        lines.append(f"missed {len(ids)}: {ids[0]}..{ids[-1]}; seen before {below}, after {above}")
    for event in client.events:
        if event.event in ("snapshot", "reset"):
            runs = [r["id"] for r in event.data.get("runs", [])]
            lines.append(f"{event.event} id {event.id}: {event.data.get('reason', '')} "
                         f"{len(runs)} runs {runs[:1]}..{runs[-1:]}")
    return "\n".join(lines)


def survive_outage(tmp_path: Any, calls_dir: Any, outage: Callable[[], Any], before: int,
                   during: int, **env: str) -> None:
    """Two workers and a stream; ``before`` runs started, then ``outage`` (a context
    manager) mid-load with ``during`` more runs started inside it; then check that
    nothing was lost or done twice."""
    staff = operator()
    with children(tmp_path) as spawn:
        url, server = daphne(spawn, **STREAM_ENV, **env)
        workers = [spawn(worker_args("--concurrency", "2"), **env) for _ in range(2)]
        for worker in workers:
            worker.wait_for_output("tasks_worker ready", 30)
        cookies = session_cookie(staff)  # logged in now: no session is written in the outage
        reader = StreamReader(url, cookies=cookies, reconnect=True)
        reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")

        run_ids = load(0, before)
        wait_until(lambda: finished_count(run_ids) >= 10, 60, "the load under way")
        with outage():
            run_ids += load(before, during) if during else []
            # A client that comes back while the database is away (another tab, a
            # dropped connection), with the last id it saw: refused or replayed, it
            # must end up with everything after that id.
            resumed_at = reader.last_event_id
            late = StreamReader(url, cookies=cookies, reconnect=True, last_event_id=resumed_at)
            time.sleep(1)  # the outage lasts at least this long after the last start
            for child in [*workers, server]:
                assert child.proc.poll() is None, child.output()
        assert finished_count(run_ids) < len(run_ids)  # the outage was mid-load
        wait_until(lambda: finished_count(run_ids) == len(run_ids), 120, "every run finished")
        expected = events_by_run(run_ids)
        expected_late = {run_id: [i for i in ids if i > resumed_at]
                         for run_id, ids in expected.items()}
        for name, client, wanted in (("the first reader", reader, expected),
                                     (f"the reader back from {resumed_at}", late, expected_late)):
            with contextlib.suppress(AssertionError):  # checked below, with the difference
                wait_until(lambda c=client, w=wanted: seen_by_run(c, run_ids) == w, 60,
                           "every event of every run")
            client.close()
            seen = seen_by_run(client, run_ids)
            missed = {run_id: sorted(set(ids) - set(seen[run_id]))
                      for run_id, ids in wanted.items() if seen[run_id] != ids}
            assert missed == {}, (f"{sum(map(len, missed.values()))} events missed or out of "
                                  f"order for {name} on {client.connections} connections "
                                  f"({client.statuses}, {client.errors}):\n"
                                  f"{describe_missed(client, missed)}\n{server.output()[-6000:]}")
        # It came back with an id the stream gave it: replayed, never reset to a snapshot.
        assert [e.data for e in late.events if e.event == "reset"] == []
        for child in [*workers, server]:
            assert child.proc.poll() is None, child.output()

    counts = Counter(store.runs(run_ids=run_ids).values_list("status", "attempt"))
    assert counts == {(Status.COMPLETED, 1): len(run_ids)}
    calls = Counter(read_calls(calls_dir, "tally"))
    assert len(calls) == len(run_ids) and set(calls.values()) == {1}  # each handler ran once
    for client, snapshots in ((reader, 1), (late, 0)):
        ids = [e.id for e in client.run_events()]
        assert ids == sorted(set(ids))  # in order, no duplicates, across reconnections
        kinds = Counter(e.event for e in client.events)
        assert (kinds["reset"], kinds["snapshot"]) == (0, snapshots)  # replayed, never reset
    # Refused while the database was away (a 503 to retry, never a 500), then replayed.
    assert late.statuses[-1] == 200 and set(late.statuses[:-1]) <= {503}, late.statuses


@requires_postgres
def test_postgres_outage_mid_load_loses_nothing_and_runs_nothing_twice(tmp_path, _calls_dir):
    settings = connection.settings_dict
    proxy = TcpProxy(settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432))

    @contextmanager
    def outage():
        proxy.cut()
        try:
            yield
            time.sleep(4)
        finally:
            proxy.restore()

    try:
        # Workers and daphne reach PostgreSQL only through the proxy; this test (the
        # web side) goes on starting runs directly while they are cut off.
        survive_outage(tmp_path, _calls_dir, outage, before=100, during=100,
                       PGPORT=str(proxy.port))
    finally:
        proxy.close()


def test_sqlite_locked_mid_load_loses_nothing_and_runs_nothing_twice(tmp_path, _calls_dir):
    if connection.vendor != "sqlite":
        pytest.skip("locks the SQLite database file")
    path = connection.settings_dict["NAME"]

    @contextmanager
    def outage():
        lock = sqlite3.connect(path, isolation_level=None, timeout=30)  # the workers write
        lock.execute("BEGIN EXCLUSIVE")  # every other writer waits (or gives up)
        locked = time.monotonic()
        try:
            yield
            time.sleep(max(0.0, 10 - (time.monotonic() - locked)))
        finally:
            lock.execute("ROLLBACK")
            lock.close()

    # No run can be started while the database is locked: the whole load goes first.
    survive_outage(tmp_path, _calls_dir, outage, before=200, during=0)
