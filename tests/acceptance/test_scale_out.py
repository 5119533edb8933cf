"""The many-process deployment of the README's scale-out guide, on this machine's
PostgreSQL and Redis: 2 daphne processes, 2 built-in workers and 2 django-q2 clusters
(Redis broker), a mixed load, one worker of each kind SIGKILLed mid-run. Every run
finishes exactly once, and every stream on each daphne sees every event of every run
its user may see (staff: all; a user: the runs they own), in order."""

from __future__ import annotations

import os
import signal
import socket
from collections import Counter

import pytest
from django.contrib.auth.models import User

import django_tasks_live as tasks_live
from django_tasks_live.models import Run, RunEvent
from django_tasks_live.states import TERMINAL, Status
from tests.acceptance.test_stream import event_ids, ids_of, redis_env, session_cookie, start_daphne
from tests.support.db import requires_postgres, requires_redis
from tests.support.djangoq import descendants, drop_queue, start_qcluster, use_django_q
from tests.support.processes import children, wait_until, worker_args
from tests.support.sse import StreamReader
from tests.support.users import operator

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True),
              requires_postgres, requires_redis]
PER_ENGINE = 24


def running_on(executor: str) -> Run | None:
    return Run.objects.filter(executor=executor, status=Status.RUNNING).first()


def test_two_daphnes_two_workers_two_clusters_survive_a_kill_of_each(
        tmp_path, settings, monkeypatch):
    staff, alice = operator(), User.objects.create_user("alice", password="x")
    # Runs on queue "other" go to the django-q2 clusters, the rest to built-in workers.
    q2 = use_django_q(settings, monkeypatch, "redis", QUEUE_EXECUTORS={"other": "django_q"})
    env = {**redis_env("redis", poll="0.5"), **q2, "TASKS_LIVE_HEARTBEAT_TIMEOUT": "3"}
    with children(tmp_path) as spawn:
        urls = [start_daphne(spawn, **env) for _ in range(2)]
        readers = {(url, who.username): StreamReader(url, cookies=session_cookie(who))
                   for url in urls for who in (staff, alice)}
        for reader in readers.values():
            reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
        workers = [spawn(worker_args("--concurrency", "2"), **env) for _ in range(2)]
        clusters = [start_qcluster(spawn, 2, **env) for _ in range(2)]
        runs = [tasks_live.using(queue=queue, owner=alice if i % 2 else None)
                .start("resumable", seconds=3.0)  # long enough to be killed mid-run
                for i in range(PER_ENGINE) for queue in ("default", "other")]

        # Mid-run, SIGKILL the built-in worker and the cluster that execute a run now. The
        # pair is taken in one look (a 3 s run may end between two queries on a busy box).
        doomed: list = []  # the worker's and the cluster's process
        victims: list[str] = []  # the worker ids of the runs they executed

        def both_engines_busy() -> bool:
            builtin, q2_run = running_on("builtin"), running_on("django_q")
            if builtin is None or q2_run is None:
                return False
            victims[:] = [builtin.worker_id, q2_run.worker_id]
            doomed[:] = [w for w in workers if builtin.worker_id.startswith(
                f"{socket.gethostname()}-{w.pid}-")] + [
                c for c in clusters if int(q2_run.worker_id.split("-")[-2]) in descendants(c.pid)]
            return len(doomed) == 2

        try:
            wait_until(both_engines_busy, 90)
        except AssertionError:
            raise AssertionError("not both engines busy: " + str(Counter(
                Run.objects.values_list("executor", "status")))) from None
        doomed_worker, doomed_cluster = doomed
        for victim in doomed:
            os.killpg(victim.pid, signal.SIGKILL)
        wait_until(lambda: doomed_worker.proc.poll() is not None
                   and doomed_cluster.proc.poll() is not None, 10, "the kills")

        wait_until(lambda: Run.objects.filter(status__in=sorted(TERMINAL)).count() == len(runs),
                   120, "every run finished")
        for (url, who), reader in readers.items():
            mine = [r for r in runs if who == "staff" or r.owner_id == alice.pk]
            for run in mine:
                reader.wait_for(lambda ev, r=run, rd=reader: ids_of(rd, r.pk) == event_ids(r.pk), 30,
                                f"every event of run {run.pk} on {url} as {who}")
            reader.close()
    finished = Run.objects.filter(pk__in=[r.pk for r in runs])
    assert Counter(finished.values_list("status", flat=True)) == {Status.COMPLETED: len(runs)}
    # Exactly once: one completion per run, whatever was killed under it.
    completions = Counter(RunEvent.objects.filter(
        status=Status.COMPLETED, kind="status", run__in=finished).values_list("run_id", flat=True))
    assert completions == {r.pk: 1 for r in runs}
    # Both kills interrupted a run, which another process of the same engine finished.
    for victim in victims:
        rescued = [r for r in finished if any(e.get("worker") == victim for e in r.errors)]
        assert rescued and all(r.worker_id != victim for r in rescued)
    ours = {r.pk for r in runs}  # (workers also ran the test app's code schedule)
    for (url, who), reader in readers.items():  # and nothing a user may not see
        allowed = {r.pk for r in runs if who == "staff" or r.owner_id == alice.pk}
        seen = {e.run["id"] for e in reader.run_events()}
        assert (seen if who == "alice" else seen & ours) == allowed, (url, who)
    drop_queue(q2)
