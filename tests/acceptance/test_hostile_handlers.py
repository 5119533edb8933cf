"""Handlers that produce what no database stores, against a real ``tasks_worker``
(issue 13.9): the worker survives, only those runs fail, each once, saying why.

Run on SQLite (``./dev test``) and PostgreSQL (``TASKS_LIVE_TEST_DB=postgres``): a lone
surrogate killed the executor and then the supervisor on SQLite (UnicodeEncodeError),
and gave a DataError on PostgreSQL.
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.states import TERMINAL, Status
from tests.conftest import read_calls
from tests.support.processes import children, wait_until, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

# where the handler puts its unstorable value -> (status, stored error)
HOSTILE = {
    "progress": (Status.COMPLETED, ""),
    "error": (Status.FAILED, "x\ufffdy"),
    "str-raises": (Status.FAILED, "<_StrRaises object; str() failed: RuntimeError>"),
    "result": (Status.FAILED, "Task 'hostile-text' returned a value that cannot be stored: the "
               "result contains a lone surrogate (\\ud800 at position 1), which is not valid "
               "Unicode text and cannot be stored."),
    "deep-result": (Status.FAILED, "Task 'hostile-text' returned a value that cannot be stored: "
                    "the result" + "[0]" * 100 + " is nested more than 100 levels deep."),
}


def all_finished(runs) -> bool:
    return all(r.status in TERMINAL for r in store.runs(run_ids=[r.pk for r in runs]))


def test_unstorable_outcomes_fail_only_their_runs_and_the_worker_lives_on(tmp_path, _calls_dir):
    # Interleaved with ordinary runs, so a batch of outcomes mixes both.
    calls = []
    for where in HOSTILE:
        calls += [("noop", {"n": len(calls)}), ("hostile-text", {"where": where}),
                  ("noop", {"n": len(calls) + 1})]
    runs = tasks_live.start_many(calls)
    with children(tmp_path) as spawn:
        worker = spawn(worker_args("--concurrency", "2"))
        worker.wait_for_output("tasks_worker ready", 30)
        wait_until(lambda: all_finished(runs), 60, "every run finished")
        assert worker.proc.poll() is None, worker.output()  # alive, not restarted
        later = tasks_live.start_many([("noop", {"n": 100 + i}) for i in range(3)])
        wait_until(lambda: all_finished(later), 30, "runs started afterwards")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    done = {r.pk: r for r in store.runs(run_ids=[r.pk for r in runs + later])}
    hostile = [done[r.pk] for r in runs if r.task_name == "hostile-text"]
    assert {r.kwargs["where"]: (r.status, r.error) for r in hostile} == HOSTILE
    assert {(r.attempt, len(r.errors)) for r in hostile if r.status == Status.FAILED} == {(1, 1)}
    noops = [done[r.pk] for r in runs + later if r.task_name == "noop"]
    assert Counter(r.status for r in noops) == {Status.COMPLETED: 2 * len(HOSTILE) + 3}
    assert {r.attempt for r in done.values()} == {1}  # nothing ran twice, nobody was "lost"
    assert not [r for r in done.values() if r.error_type in ("WorkerLost", "OutcomeNotStored")]
    assert Counter(read_calls(_calls_dir, "hostile-text")) == dict.fromkeys(HOSTILE, 1)
    progress = next(r for r in hostile if r.kwargs["where"] == "progress")
    assert (progress.progress_message, progress.result) == ("x\ufffdy", "ok")
    assert "Traceback" not in worker.output()  # no executor or supervisor crashed
