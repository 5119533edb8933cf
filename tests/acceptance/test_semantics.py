"""Issue 14's semantics against a real ``tasks_worker``: a handler that acknowledges a
cancel ends canceled with its partial result; retention applies itself."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Lease, Run, Worker
from django_tasks_live.states import Status
from tests.support.processes import children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def test_a_handler_that_sees_the_cancel_and_returns_ends_canceled(tmp_path):
    run = tasks_live.start("acknowledges-cancel", seconds=60)
    with children(tmp_path) as spawn:
        spawn(worker_args())
        wait_until(lambda: store.get_run(run.pk).status == Status.RUNNING, 30, "running")
        time.sleep(0.3)  # let it count a little
        assert tasks_live.cancel(run).status == Status.CANCEL_REQUESTED
        done = tasks_live.wait(run, timeout=30)
    assert done.status == Status.CANCELED
    assert done.result["done"] > 0  # what it had done, kept as the partial result
    assert done.error == "" and done.errors == []  # it returned: nothing was killed


def test_workers_apply_retention_themselves_one_at_a_time_in_bounded_rounds(tmp_path):
    kept_per_task, batch, batches = 3, 4, 2
    runs = store.create_runs([store.NewRun(task_name="noop") for _ in range(30)])
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(status=Status.COMPLETED,
                                                           finished_at=timezone.now())
    active = tasks_live.using(delay=3600).start("noop")  # never finished: never pruned
    store.register_worker("long-gone", "host", 1, [], 1)
    long_ago = timezone.now() - dt.timedelta(days=30)
    Worker.objects.filter(pk="long-gone").update(heartbeat_at=long_ago, stopped_at=long_ago)
    env = {"TASKS_LIVE_RETENTION_KEEP_LAST": str(kept_per_task), "TASKS_LIVE_RETENTION_INTERVAL": "1",
           "TASKS_LIVE_RETENTION_BATCH_SIZE": str(batch),
           "TASKS_LIVE_RETENTION_MAX_BATCHES": str(batches), "TASKS_LIVE_LOG_LEVEL": "INFO"}
    counts = []
    with children(tmp_path) as spawn:
        workers = [spawn(worker_args("--worker-id", f"w{i}"), **env) for i in range(2)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not counts or counts[-1] > kept_per_task + 1):
            # Only this test's task: the test app's every-minute schedule adds runs of
            # its own whenever a minute turns.
            counts.append(Run.objects.filter(task_name="noop").count())
            time.sleep(0.02)
        for worker in workers:
            worker.stop()
        outputs = "\n".join(worker.output() for worker in workers)
        rounds = [int(n) for n in re.findall(r"Retention: deleted (\d+) runs", outputs)]
    assert counts[-1] == kept_per_task + 1, (counts[-20:], outputs)
    remaining = set(Run.objects.filter(task_name="noop").values_list("id", flat=True))
    assert remaining == {*(r.pk for r in runs[-kept_per_task:]), active.pk}
    # Bounded rounds (at most `batches` batches of `batch` runs each), which together
    # deleted each prunable run once: one lease for both workers.
    assert sum(rounds) == 30 - kept_per_task and max(rounds) <= batch * batches, rounds
    assert not Worker.objects.filter(pk="long-gone").exists()
    assert Lease.objects.get(pk="retention").holder in {"w0", "w1"}
