"""A real ``tasks_worker`` and pauses: a paused queue or task is not claimed, its runs
stay pending while others run, the pause holds across a worker's start, and a resume
starts them at once (SQLite, and PostgreSQL with TASKS_LIVE_TEST_DB=postgres, where
LISTEN/NOTIFY carries the pause)."""

from __future__ import annotations

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from tests.support.processes import children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def statuses(runs: list[Run]) -> list[str]:
    found = store.statuses([run.pk for run in runs])
    return [found[run.pk] for run in runs]


def done(runs: list[Run]) -> bool:
    return statuses(runs) == [Status.COMPLETED] * len(runs)


def test_paused_queue_and_task_wait_for_a_resume_in_a_running_worker(tmp_path):
    tasks_live.pause(queue="other")  # before the worker starts: it reads the pause at once
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "2"))
        worker.wait_for_output("paused: queue other", 60)
        held = [tasks_live.using(queue="other").start("noop") for _ in range(3)]
        free = tasks_live.start("noop")
        wait_until(lambda: done([free]), 30, "the run of the open queue")
        assert statuses(held) == [Status.PENDING] * 3  # created before it, still waiting
        tasks_live.resume(queue="other")
        wait_until(lambda: done(held), 30, "the resumed queue's runs")
        worker.wait_for_output("paused: nothing")

        tasks_live.pause(task="echo")  # while the worker runs
        worker.wait_for_output("paused: task echo", 30)
        echo = tasks_live.start("echo", payload="x")
        noop = tasks_live.start("noop")
        wait_until(lambda: done([noop]), 30, "the run of another task")
        assert statuses([echo]) == [Status.PENDING]
        tasks_live.resume(task="echo")
        wait_until(lambda: done([echo]), 30, "the resumed task's run")
        worker.stop()
