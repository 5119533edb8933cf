"""Where django-tasks-live's worker spends its time: SQL statements and CPU per run.

    .venv/bin/python bench/profile_live.py [--db sqlite|postgres] [--n 2000] [--concurrency 1]
                                           [--py-spy stacks.txt]

Enqueues ``--n`` no-ops into a throwaway database, runs ``tasks_worker --burst`` over
them and reports, per run: statements by kind for the supervisor and the executors,
CPU milliseconds (user+sys of the worker and its executors), and wall time. Counts of
statements do not depend on how busy the machine is, unlike jobs/s. ``--py-spy`` also
records raw stacks of all worker processes while they hold the GIL
(``py-spy record --subprocesses --gil -f raw``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.services import flushed_redis, temp_postgres_db  # noqa: E402

ENQUEUE = "import django; django.setup(); from bench.systems import SYSTEMS; " \
          "SYSTEMS['live'].enqueue_many({n}, 1)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--layer", choices=["redis", "none"], default="redis")
    parser.add_argument("--py-spy", type=Path, help="write raw py-spy stacks here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tasks-live-profile-") as tmp, \
            flushed_redis([8]), temp_postgres_db("profile", args.db) as pg_name:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings", "PYTHONPATH": str(ROOT),
               "BENCH_SYSTEM": "live", "BENCH_DB": args.db, "BENCH_REDIS_DB": "8",
               "BENCH_LIVE_LAYER": args.layer,
               "BENCH_DB_NAME": pg_name or str(Path(tmp) / "live.sqlite3")}
        py = sys.executable
        subprocess.run([py, "-m", "django", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        subprocess.run([py, "-c", ENQUEUE.format(n=args.n)], env=env, cwd=ROOT, check=True)
        logdir = Path(tmp) / "queries"
        logdir.mkdir()
        cmd = [py, "-m", "django", "tasks_worker", "--burst",
               "--concurrency", str(args.concurrency)]
        if args.py_spy:
            # PYSPY_EXTRA="--idle" samples wall time (waits included) instead of GIL time.
            extra = os.environ.get("PYSPY_EXTRA", "--gil").split()
            cmd = [str(Path(py).parent / "py-spy"), "record", "--subprocesses", "--nonblocking", *extra,
                   "-r", "250", "-f", "raw", "-o", str(args.py_spy), "--", *cmd]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        worker = subprocess.run(cmd, env={**env, "BENCH_QUERY_LOG": str(logdir)}, cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if worker.returncode:
            sys.exit(f"worker failed ({worker.returncode}):\n{worker.stdout}\n{worker.stderr}")
        supervisor_pid = _supervisor_pid(worker.stdout)
        totals: dict[str, Counter[str]] = {"supervisor": Counter(), "executors": Counter()}
        for f in logdir.glob("*.json"):
            role = "supervisor" if f.stem == str(supervisor_pid) else "executors"
            totals[role].update(json.loads(f.read_text()))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{args.n} no-ops, {args.db}, concurrency {args.concurrency}, layer {args.layer}: "
          f"wall {wall:.1f} s incl. start-up ({args.n / wall:.0f} runs/s), "
          f"CPU {cpu * 1000 / args.n:.2f} ms per run (all worker processes, incl. start-up)")
    for role, counts in totals.items():
        seconds = {kind[:-2]: value for kind, value in counts.items() if kind.endswith(" s")}
        counts = Counter({kind: n for kind, n in counts.items() if not kind.endswith(" s")})
        print(f"\n{role}: {sum(counts.values()) / args.n:.2f} statements per run, "
              f"{sum(seconds.values()) * 1e6 / args.n:.0f} µs in them per run")
        for kind, count in counts.most_common():
            print(f"  {count / args.n:6.3f}  {seconds.get(kind, 0) * 1e6 / args.n:6.1f} µs  {kind}")


def _supervisor_pid(output: str) -> int | None:
    # "tasks_worker ready: id=<host>-<pid>-<hex> ..." (the default worker id embeds the pid)
    for line in output.splitlines():
        if line.startswith("tasks_worker ready: id="):
            return int(line.split("id=", 1)[1].split()[0].rsplit("-", 2)[1])
    return None


if __name__ == "__main__":
    main()
