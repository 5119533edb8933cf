"""PostgreSQL only: concurrent claims over several connections (FOR UPDATE SKIP LOCKED).

Run with ``TASKS_LIVE_TEST_DB=postgres``; skipped (with the reason) on SQLite, and the
whole suite skips when the server does not answer (see conftest).
"""

import threading
from collections import Counter

import pytest
from django.db import connection, transaction

from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from tests.support.db import requires_postgres

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

RUNS = 600
THREADS = 6


def in_thread(fn):
    """Run ``fn`` on its own thread, hence its own database connection (closed after)."""
    def target(*args):
        try:
            fn(*args)
        finally:
            connection.close()
    return target


def run_concurrently(fn, worker_ids) -> None:
    """Call ``fn(worker_id)`` for every id at once, each on its own thread (and database
    connection), and wait for all of them."""
    start = threading.Barrier(len(worker_ids))

    @in_thread
    def target(worker_id):
        start.wait()
        fn(worker_id)

    threads = [threading.Thread(target=target, args=(w,)) for w in worker_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_concurrent_claims_never_share_a_run():
    store.create_runs([store.NewRun(task_name="noop", kwargs={"n": i}) for i in range(RUNS)])
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(THREADS)}

    def claim_all(worker_id):
        while batch := store.claim(worker_id, None, limit=7):
            claimed[worker_id] += [run.pk for run in batch]

    run_concurrently(claim_all, list(claimed))
    counts = Counter(pk for ids in claimed.values() for pk in ids)
    assert len(counts) == RUNS and set(counts.values()) == {1}  # every run, exactly once
    assert sum(1 for ids in claimed.values() if ids) > 1  # the workers really overlapped
    owners = dict(Run.objects.values_list("id", "worker_id"))
    assert all(owners[pk] == w for w, ids in claimed.items() for pk in ids)
    assert set(Run.objects.values_list("status", flat=True)) == {Status.CLAIMED}


def test_a_claim_skips_rows_locked_by_another_transaction_instead_of_waiting():
    runs = store.create_runs([store.NewRun(task_name="noop") for _ in range(4)])
    locked = threading.Event()
    release = threading.Event()

    @in_thread
    def hold_first_two():
        with transaction.atomic():
            list(Run.objects.select_for_update().filter(pk__in=[runs[0].pk, runs[1].pk]))
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_first_two)
    holder.start()
    try:
        assert locked.wait(10)
        got = store.claim("w1", None, limit=10)  # would block here without SKIP LOCKED
        assert [r.pk for r in got] == [runs[2].pk, runs[3].pk]
    finally:
        release.set()
        holder.join(10)
    assert [r.pk for r in store.claim("w2", None, limit=10)] == [runs[0].pk, runs[1].pk]


def test_settle_batches_outcomes_and_claims_without_sharing():
    store.create_runs([store.NewRun(task_name="noop") for _ in range(200)])
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}

    def work(worker_id):
        outcomes = []
        while True:
            _, batch = store.settle(outcomes, worker_id, None, limit=5)
            if not batch and not outcomes:
                return
            claimed[worker_id] += [run.pk for run in batch]
            outcomes = [store.Outcome(run.pk, Status.COMPLETED, {"result": run.pk}) for run in batch]

    run_concurrently(work, list(claimed))
    counts = Counter(pk for ids in claimed.values() for pk in ids)
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert Run.objects.filter(status=Status.COMPLETED).count() == 200


def test_new_runs_notify_listening_workers_once_per_queue_at_commit():
    wrapper = connection
    wrapper.ensure_connection()
    listener = wrapper.get_new_connection(wrapper.get_connection_params())
    listener.autocommit = True
    listener.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
    try:
        with transaction.atomic():
            store.create_runs([store.NewRun(task_name="noop", queue=q) for q in ["a", "b", "a"]])
            # Nothing is announced before the runs are visible to workers.
            assert list(listener.notifies(timeout=0.2)) == []
        notified = [n.payload for n in listener.notifies(timeout=1, stop_after=2)]
    finally:
        listener.close()
    assert sorted(notified) == ["a", "b"]


# ---------------------------------------------------------------- unique starts


def starts_from_threads(start, threads=8, each=25) -> list[tuple[int, bool]]:
    """``start(thread, i)`` from several connections at once; every (run id, created)."""
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def loop(thread):
        for i in range(each):
            run, created = start(thread, i)
            with lock:
                results.append((run.pk, created))

    run_concurrently(loop, list(range(threads)))
    assert len(results) == threads * each
    return results


def test_concurrent_unique_starts_create_one_run():
    import django_tasks_live as tasks_live

    results = starts_from_threads(lambda t, i: tasks_live.start_or_get("unique-sync", account=1))
    assert {pk for pk, _ in results} == {results[0][0]}
    assert [created for _, created in results].count(True) == 1
    assert Run.objects.filter(task_name="unique-sync").count() == 1


def test_concurrent_debounced_starts_collapse_into_one_run():
    import django_tasks_live as tasks_live

    results = starts_from_threads(
        lambda t, i: tasks_live.start_or_get("debounced", value=t * 100 + i))
    assert len({pk for pk, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    [run] = Run.objects.filter(task_name="debounced")
    # Some thread's last start won; nothing was lost to a half-written row.
    assert run.kwargs["value"] in {t * 100 + 24 for t in range(8)}


def test_a_run_once_task_succeeds_once_under_concurrent_starts_and_executions(_calls_dir):
    import django_tasks_live as tasks_live
    from django_tasks_live import runner
    from tests.conftest import read_calls

    def start_and_run(thread, i):
        run, created = tasks_live.start_or_get("once", account=5)
        claimed = store.claim_run(run.pk, f"w{thread}")
        if claimed is not None:
            runner.execute(claimed.pk, f"w{thread}", run=claimed)
        return run, created

    starts_from_threads(start_and_run, threads=6, each=20)
    assert list(Run.objects.filter(task_name="once").values_list("status", flat=True)) == [
        Status.COMPLETED]
    assert read_calls(_calls_dir, "once") == ["5"]
