"""Pausing tasks and queues: what a claim skips, that nothing changes while nothing is
paused, how a pause reaches workers, and the reason a waiting run shows."""

from __future__ import annotations

import asyncio
from io import StringIO
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import pauses, store
from django_tasks_live.executors import django_q
from django_tasks_live.models import Pause, Run
from django_tasks_live.pauses import PauseSet
from django_tasks_live.states import Status
from django_tasks_live.worker.supervisor import Supervisor

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_copy():
    pauses.forget()
    yield
    pauses.forget()


def claimed_names(queues=None, paused=pauses.NOTHING) -> list[tuple[str, str]]:
    return sorted((run.task_name, run.queue)
                  for run in store.claim("w1", queues, 100, paused=paused))


def start_mix() -> None:
    for queue in ("default", "other"):
        tasks_live.using(queue=queue).start("noop")
        tasks_live.using(queue=queue).start("echo")


def test_with_nothing_paused_the_claim_is_exactly_the_unpaused_one():
    now = timezone.now()
    for queues in (None, ["default"], ["default", "other"]):
        plain = store._due_selection(connection, queues, 10, now)
        assert store._due_selection(connection, queues, 10, now, pauses.NOTHING) == plain
        assert plain[0] == store._due_sql(connection.alias, len(queues or []))
        assert "NOT IN" not in plain[0]


def test_a_paused_queue_and_a_paused_task_are_skipped_by_every_claim_shape():
    start_mix()
    paused = PauseSet(tasks=frozenset({"echo"}), queues=frozenset({"other"}))
    assert claimed_names(None, paused) == [("noop", "default")]
    assert claimed_names(["default", "other"], paused) == []  # noop/default is claimed already
    # What was skipped is still pending, and claimed once nothing is paused.
    assert claimed_names(["default", "other"]) == [("echo", "default"), ("echo", "other"),
                                                   ("noop", "other")]


def test_a_worker_of_paused_queues_only_claims_nothing_and_sees_nothing_due():
    tasks_live.using(queue="other").start("noop")
    paused = PauseSet(queues=frozenset({"other"}))
    assert store.claim("w1", ["other"], 10, paused=paused) == []
    assert not store.has_due(["other"], paused) and not store.has_due(None, paused)
    assert store.has_due(["other"]) and store.claim_plan(["other"], paused=paused).startswith(
        "nothing to claim")
    # A worker of a paused and an open queue claims from the open one (its own index).
    tasks_live.using(queue="default").start("noop")
    assert [r.queue for r in store.claim("w1", ["other", "default"], 10, paused=paused)] == [
        "default"]


@pytest.mark.parametrize(("queues", "paused", "index"), [
    (None, PauseSet(tasks=frozenset({"echo"})), store.CLAIM_ANY_INDEX),
    (None, PauseSet(queues=frozenset({"other"})), store.CLAIM_ANY_INDEX),
    (["default", "other"], PauseSet(queues=frozenset({"other"})), store.CLAIM_INDEX),
])
def test_a_claim_under_a_pause_still_reads_a_claim_index_in_order(queues, paused, index):
    backlog = 20_000 if connection.vendor == "postgresql" else 200
    store.create_runs([store.NewRun(task_name="noop", queue=q)
                       for q in ["default", "other"] * (backlog // 2)])
    plan = store.claim_plan(queues, limit=50, paused=paused)
    assert index in plan  # a paused queue dropped from two leaves one: its own index
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_pause_and_resume_are_rows_that_say_why_runs_wait():
    run = tasks_live.using(queue="other").start("noop")
    tasks_live.pause(queue="other", reason="SMTP down")
    tasks_live.pause(queue="other")  # again: kept as it was
    tasks_live.pause(task="echo")
    assert tasks_live.paused() == PauseSet(frozenset({"echo"}), frozenset({"other"}))
    assert Pause.objects.get(kind="queue").reason == "SMTP down"
    paused = pauses.current()
    assert paused.run_reason(run) == "queue other is paused"
    assert paused.reason("echo", "default") == "task echo is paused"
    run.status = Status.RUNNING
    assert paused.run_reason(run) == ""  # a running run is not held back
    assert tasks_live.resume(queue="other") is True
    assert tasks_live.resume(queue="other") is False
    assert pauses.current() == PauseSet(tasks=frozenset({"echo"}))  # this process re-read it


def test_pause_names_are_checked():
    with pytest.raises(ValueError, match="Name a task or a queue"):
        tasks_live.pause()
    with pytest.raises(ValueError, match="queue must be 1-100 letters"):
        tasks_live.pause(queue="no spaces")
    with pytest.raises(ValueError, match="task must be a task name"):
        tasks_live.resume(task="")


def test_the_async_twins_pause_and_resume():
    async def main():
        await tasks_live.apause(task="noop")
        got = (await tasks_live.apaused()).tasks, await tasks_live.aresume(task="noop")
        await sync_to_async(connections.close_all)()  # the twins' database thread
        return got

    assert asyncio.run(main()) == ({"noop"}, True)


def test_the_command_pauses_lists_and_resumes():
    out = StringIO()
    call_command("tasks_pause", queue="other", reason="maintenance", stdout=out)
    call_command("tasks_pause", stdout=out)
    call_command("tasks_pause", queue="other", resume=True, stdout=out)
    call_command("tasks_pause", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Paused queue other."
    assert lines[1].startswith("queue other paused since ") and lines[1].endswith("(maintenance)")
    assert lines[2:] == ["Resumed queue other.", "Nothing is paused."]
    with pytest.raises(CommandError, match="--resume needs"):
        call_command("tasks_pause", resume=True)
    with pytest.raises(CommandError, match="queue must be"):
        call_command("tasks_pause", queue="a b")


class Told:
    """A slot that records what the supervisor tells its executor."""

    def __init__(self) -> None:
        self.told: list = []
        self.woken = 0

    def tell(self, message) -> None:
        self.told.append(message)

    def wake(self) -> bool:
        self.woken += 1
        return True


def test_the_supervisor_tells_executors_of_a_change_and_wakes_them_on_resume():
    said = StringIO()
    supervisor = Supervisor(worker_id="w1", stdout=said)
    slot = Told()
    supervisor.slots = [slot]
    supervisor._refresh_pauses()
    assert slot.told == [] and slot.woken == 0  # nothing paused, nothing changed
    tasks_live.pause(queue="other")
    supervisor._refresh_pauses()
    assert slot.told == [("paused", PauseSet(queues=frozenset({"other"})))] and slot.woken == 0
    tasks_live.resume(queue="other")
    supervisor._refresh_pauses()
    assert slot.told[-1] == ("paused", pauses.NOTHING) and slot.woken == 1
    assert said.getvalue().splitlines() == ["paused: queue other", "paused: nothing"]


def test_django_q2_neither_hands_over_nor_runs_a_paused_run(settings, monkeypatch):
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "EXECUTOR": "django_q"}
    tasks_live.pause(queue="other")
    held = tasks_live.using(queue="other").start("noop")  # handed over at commit, as always
    monkeypatch.setattr(django_q, "current_process", lambda: SimpleNamespace(id="djq-t"))
    assert django_q.run(held.pk) is None  # the delivered hand-over is given back
    held = Run.objects.get(pk=held.pk)
    assert (held.status, held.handed_at) == (Status.PENDING, None)
    assert django_q.sweep() == []  # ... and not handed over again while paused
    tasks_live.resume(queue="other")
    monkeypatch.setattr(django_q, "hand_over", lambda run_ids: list(run_ids))
    assert django_q.sweep() == [held.pk]
    assert store.claim_run(held.pk, "djq-t", paused=pauses.current()).status == Status.RUNNING
