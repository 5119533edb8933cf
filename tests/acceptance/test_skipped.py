"""``should_execute`` under racing ``tasks_worker`` processes: every run is asked once,
by the worker that claimed it; turned-down runs end ``skipped`` and never run."""

from __future__ import annotations

from collections import Counter

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.states import Status
from tests.conftest import read_calls
from tests.support.processes import children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def test_four_workers_skip_exactly_the_runs_turned_down(tmp_path, _calls_dir):
    verdicts = ["yes", "no", "stale"]
    runs = tasks_live.start_many([("maybe", {"item": f"i{i}", "verdict": verdicts[i % 3]})
                                  for i in range(120)])
    ids = [run.pk for run in runs]
    with children(tmp_path) as spawn:
        workers = [spawn(worker_args("--worker-id", f"w{n}", "--concurrency", "2"))
                   for n in range(4)]
        wait_until(lambda: all(s in (Status.COMPLETED, Status.SKIPPED)
                               for s in store.statuses(ids).values()), 120, "all runs finished")
        for worker in workers:
            worker.stop()
    done = {run.pk: run for run in store.runs(run_ids=ids)}
    for i, run_id in enumerate(ids):
        run = done[run_id]
        expected = {"yes": (Status.COMPLETED, ""),
                    "no": (Status.SKIPPED, "Skipped: should_execute of 'maybe' returned False"),
                    "stale": (Status.SKIPPED, "Skipped: stale")}[verdicts[i % 3]]
        assert (run.status, "" if run.status == Status.COMPLETED else run.progress_message) == expected
    asked = Counter(int(call.split(":")[0]) for call in read_calls(_calls_dir, "asked"))
    assert asked == dict.fromkeys(ids, 1)  # each run asked once, whichever worker claimed it
    ran = Counter(read_calls(_calls_dir, "maybe"))
    assert ran == {f"i{i}": 1 for i in range(120) if i % 3 == 0}
