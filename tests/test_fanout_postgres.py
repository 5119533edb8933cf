"""PostgreSQL only: the stream's hub and a transaction that commits its event ids late.

Concurrent transactions commit ids out of order; on a starved machine a transaction
can hold an id for seconds while newer ids commit. The hub must wait for it however
long it takes (and skip an id only once nothing can still commit it), both while it
reads and when a new hub picks its starting cursor.
"""

import asyncio
import threading
import time

import pytest
from django.db import connection, transaction

from django_tasks_live import store
from django_tasks_live.fanout import Hub
from django_tasks_live.models import RunEvent
from tests.support.db import requires_postgres

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

SLOW_COMMIT = 2.5  # longer than any settle delay the hub could reasonably wait out


class SlowStart:
    """``store.create_runs`` on its own connection whose commit waits for ``commit()``."""

    def __init__(self, runs: int) -> None:
        self.inserted = threading.Event()
        self._commit = threading.Event()
        self.event_ids: list[int] = []
        self._thread = threading.Thread(target=self._start, args=(runs,))
        self._thread.start()
        assert self.inserted.wait(10)

    def _start(self, runs: int) -> None:
        try:
            with transaction.atomic():
                created = store.create_runs([store.NewRun(task_name="noop") for _ in range(runs)])
                self.event_ids = sorted(RunEvent.objects.filter(run__in=created).values_list(
                    "id", flat=True))
                self.inserted.set()
                self._commit.wait(30)
        finally:
            connection.close()

    def commit(self) -> None:
        self._commit.set()
        self._thread.join(10)


def created_event_ids(runs: int) -> list[int]:
    created = store.create_runs([store.NewRun(task_name="noop") for _ in range(runs)])
    return sorted(RunEvent.objects.filter(run__in=created).values_list("id", flat=True))


class HubRounds:
    """A hub on an event loop of its own, driven a round at a time from the test (whose
    thread stays synchronous, so it can write through the ORM in between)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.hub = self.loop.run_until_complete(self._started())

    @staticmethod
    async def _started() -> Hub:
        hub = Hub()
        await hub._start_cursor()
        return hub

    def rounds(self, seconds: float) -> list[int]:
        """The event ids the hub fans out over ``seconds`` of rounds, 20 ms apart."""
        return self.loop.run_until_complete(self._rounds(seconds))

    async def _rounds(self, seconds: float) -> list[int]:
        hub, seen = self.hub, []
        deadline = time.monotonic() + seconds
        while True:
            for batch in await hub._read(hub._read_new, hub.cursor):
                hub.cursor = batch.upto
                seen += [item.event_id for item in batch.items]
            if time.monotonic() >= deadline:
                return seen
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.hub.stop()
        self.loop.close()


@pytest.fixture
def hub_rounds():
    rounds = HubRounds()
    yield rounds
    rounds.close()


def test_hub_never_skips_ids_of_a_transaction_that_commits_late(hub_rounds):
    slow = SlowStart(runs=3)  # takes the next ids and holds them
    newer = created_event_ids(2)  # commits newer ids at once
    assert newer[0] > slow.event_ids[-1]
    assert hub_rounds.rounds(SLOW_COMMIT) == []  # held at the hole
    slow.commit()
    assert hub_rounds.rounds(0.2) == slow.event_ids + newer


def test_hub_skips_the_ids_of_a_rolled_back_transaction_once_it_has_ended(hub_rounds):
    held, roll_back = threading.Event(), threading.Event()

    def start_and_roll_back():
        try:
            with transaction.atomic():
                store.create_runs([store.NewRun(task_name="noop")])
                held.set()
                roll_back.wait(30)
                transaction.set_rollback(True)
        finally:
            connection.close()

    thread = threading.Thread(target=start_and_roll_back)
    thread.start()
    assert held.wait(10)
    newer = created_event_ids(2)
    assert hub_rounds.rounds(0.3) == []  # the hole may still fill
    roll_back.set()
    thread.join(10)
    assert hub_rounds.rounds(0.3) == newer  # it cannot any more
    assert hub_rounds.hub._hole is None


def test_a_new_hub_starts_below_ids_a_running_transaction_may_still_commit():
    first = created_event_ids(1)
    slow = SlowStart(runs=3)
    newer = created_event_ids(2)
    time.sleep(SLOW_COMMIT)  # the newer ids are old by any clock when the hub starts
    hub_rounds = HubRounds()
    try:
        start = hub_rounds.hub.cursor
        assert start < slow.event_ids[0]
        before = hub_rounds.rounds(0.2)  # nothing past the ids still held
        assert all(i < slow.event_ids[0] for i in before)
        slow.commit()
        seen = before + hub_rounds.rounds(0.2)
        assert seen == [i for i in first + slow.event_ids + newer if i > start]
    finally:
        hub_rounds.close()
