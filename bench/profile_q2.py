"""Where a django-q2 worker running this app's layer spends its time, per run.

    .venv/bin/python bench/profile_q2.py [--db sqlite|postgres] [--n 1000] [--top 30]

Enqueues ``--n`` no-ops with ``EXECUTOR = "django_q"`` (hand-overs go to a flushed Redis
broker nobody reads), then, in one process, calls the django-q2 task
(``executors.django_q.run``) on each run id, the way a django-q2 worker process does,
under cProfile; prints CPU and wall milliseconds per run, SQL statements per run by
kind and the costliest functions. It measures this app's layer alone: django-q2's own
per-task work (its pusher, monitor and broker) is not in these figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.services import flushed_redis, temp_postgres_db  # noqa: E402

REDIS_DB = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--layer", choices=["redis", "none"], default="redis")
    parser.add_argument("--no-profile", action="store_true", help="CPU and wall only")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        profile(args)
        return
    with tempfile.TemporaryDirectory(prefix="tasks-live-profile-q2-") as tmp, \
            flushed_redis([REDIS_DB]), temp_postgres_db("profileq2", args.db) as pg_name:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings", "PYTHONPATH": str(ROOT),
               "BENCH_SYSTEM": "liveq2redis", "BENCH_DB": args.db,
               "BENCH_REDIS_DB": str(REDIS_DB), "BENCH_LIVE_LAYER": args.layer,
               "BENCH_DB_NAME": pg_name or str(Path(tmp) / "liveq2.sqlite3")}
        subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], env=env, cwd=ROOT,
                       check=True)
        subprocess.run([sys.executable, __file__, "--inner", "--db", args.db, "--n", str(args.n),
                        "--top", str(args.top), "--sort", args.sort, "--layer", args.layer,
                        *(["--no-profile"] if args.no_profile else [])], env=env, cwd=ROOT,
                       check=True)


def profile(args: argparse.Namespace) -> None:
    import cProfile
    import pstats
    import resource
    import time
    from collections import Counter

    import django

    django.setup()
    from django.db import connection

    from bench import querylog
    from bench.systems import SYSTEMS
    from django_tasks_live import events
    from django_tasks_live.executors import django_q
    from django_tasks_live.models import Run

    SYSTEMS["liveq2redis"].enqueue_many(args.n, 1)
    run_ids = list(Run.objects.order_by("id").values_list("id", flat=True))
    django_q.current_process()  # the worker row and its guard thread, as on post_spawn
    events.prepare()
    counts: Counter[str] = Counter()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        counts[querylog._kind(sql)] += 1
        return execute(sql, params, many, context)

    # Wall time: in Python 3.12 cProfile sees every thread (sys.monitoring), so a CPU
    # clock of one thread would be compared with another's.
    profiler = cProfile.Profile()
    with connection.execute_wrapper(count):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if not args.no_profile:
            profiler.enable()
        for run_id in run_ids:
            django_q.run(run_id)
        profiler.disable()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    events.pusher.flush()
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    done = Run.objects.filter(status="completed").count()
    n = len(run_ids)
    print(f"{n} runs ({done} completed), {args.db}: CPU {cpu * 1000 / n:.2f} ms/run "
          f"(this process, guard and pusher threads included), wall {wall * 1000 / n:.2f} ms/run "
          f"({'wall clock' if args.no_profile else 'under cProfile'}), layer {args.layer}")
    print(f"main thread: {sum(counts.values()) / n:.2f} statements per run")
    for kind, c in counts.most_common():
        print(f"  {c / n:6.3f}  {kind}")
    if not args.no_profile:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
