"""Worker benchmark: django-tasks-live's ``tasks_worker`` side by side with its peers.

    .venv/bin/python bench/workers.py [--quick] [--systems live,dtdb,...] [--dbs sqlite,postgres]

For each system and database: a throwaway database (a SQLite file in a temp dir, or a
PostgreSQL database created and dropped at 127.0.0.1:5432) and its own flushed Redis
database numbers; one driver process (``bench/driver.py``) measures no-op throughput at
each concurrency and idle pickup latency. Systems that keep nothing in the database
(Celery, Huey) run once and are compared with this project on each database.
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(ROOT))

from bench.report import render, targets  # noqa: E402
from bench.services import (  # noqa: E402
    flushed_redis,
    postgres_available,
    redis_available,
    temp_postgres_db,
)
from bench.systems import SYSTEMS  # noqa: E402

REDIS_BASE = 8  # Redis databases 8..15 belong to the benchmark, flushed before and after
OURS = "live"


def run_driver(key: str, db: str, db_name: str, redis_db: int, args: argparse.Namespace,
               logdir: Path) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": str(ROOT),
        "BENCH_SYSTEM": key,
        "BENCH_DB": db,
        "BENCH_DB_NAME": db_name,
        "BENCH_REDIS_DB": str(redis_db),
    }
    cmd = [sys.executable, "-m", "bench.driver", "--system", key, "--n", str(args.n),
           "--samples", str(args.samples), "--concurrency", args.concurrency,
           "--latency-at", str(args.latency_at), "--timeout", str(args.phase_timeout),
           "--logdir", str(logdir)]
    log = logdir / f"driver-{key}-{db}.log"
    budget = 2 * args.phase_timeout * len(args.concurrency.split(",")) + 10 * args.samples + 120
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=out,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return {"system": key, "db": db, "error": f"driver over its {budget:.0f}s budget",
                    "phases": {}}
    for line in stdout.decode().splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    return {"system": key, "db": db, "phases": {},
            "error": f"driver exited {proc.returncode}, see {log}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 no-ops, 20 latency samples")
    parser.add_argument("--n", type=int, help="no-ops per throughput phase (default 2000)")
    parser.add_argument("--samples", type=int, help="idle pickup samples (default 60)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="subset of: " + ",".join(SYSTEMS))
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--latency-at", type=int, default=1, help="concurrency of the latency phase")
    parser.add_argument("--phase-timeout", type=float, default=None,
                        help="seconds one throughput phase may take (default scales with --n)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    args = parser.parse_args()
    args.n = args.n or (400 if args.quick else 2000)
    args.samples = args.samples if args.samples is not None else (20 if args.quick else 60)
    args.phase_timeout = args.phase_timeout or 30 + args.n / 10

    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    dbs = [d for d in args.dbs.split(",") if d]
    if set(dbs) - {"sqlite", "postgres"}:
        parser.error("--dbs takes sqlite and/or postgres")
    notes = []
    if "postgres" in dbs and not postgres_available():
        dbs.remove("postgres")
        notes.append("PostgreSQL at 127.0.0.1:5432 unreachable: skipped.")
    if not redis_available():
        systems = [s for s in systems if SYSTEMS[s].redis_dbs == 0 or s == OURS]
        os.environ["BENCH_LIVE_LAYER"] = "none"
        notes.append("Redis at 127.0.0.1:6379 unreachable: Redis peers skipped, no channel layer.")
    if OURS in systems and not (ROOT / "django_tasks_live/management/commands/tasks_worker.py").exists():
        systems.remove(OURS)
        notes.append("tasks_worker is not there yet: django-tasks-live skipped.")

    redis_db = {}
    next_db = REDIS_BASE
    for key in systems:
        redis_db[key] = next_db
        next_db += SYSTEMS[key].redis_dbs
    if next_db > 16:
        parser.error("not enough Redis databases for these systems")

    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tasks-live-bench-") as tmp:
        logdir = Path(tmp)
        plan = [(k, d) for d in dbs for k in systems
                if SYSTEMS[k].uses_db and SYSTEMS[k].only_db in (None, d)]
        plan += [(k, "redis") for k in systems if not SYSTEMS[k].uses_db]
        for key, db in plan:
            print(f"… {SYSTEMS[key].label} on {db}", file=sys.stderr, flush=True)
            numbers = range(redis_db[key], redis_db[key] + SYSTEMS[key].redis_dbs)
            with flushed_redis(numbers), temp_postgres_db(key, db) as pg_name:
                name = pg_name or str(logdir / f"{key}.sqlite3")
                result = run_driver(key, db, name, redis_db[key], args, logdir)
            results.append(result)
            if result.get("error"):
                print(f"   error: {result['error']}", file=sys.stderr, flush=True)
            for c, phase in result.get("phases", {}).items():
                print(f"   c{c}: {json.dumps(phase)}", file=sys.stderr, flush=True)
        if any(r.get("error") for r in results):
            keep = Path(tempfile.mkdtemp(prefix="tasks-live-bench-logs-"))
            for f in logdir.glob("*.log"):
                f.rename(keep / f.name)
            notes.append(f"Errors occurred; logs kept in {keep}.")

    meta = {"n": args.n, "samples": args.samples, "concurrency": args.concurrency,
            "latency_at": args.latency_at, "seconds": round(time.monotonic() - started),
            "live_layer": os.environ.get("BENCH_LIVE_LAYER", "redis")}
    text = render(results, dbs, meta, notes) + "\n" + targets(results, dbs)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
