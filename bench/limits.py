"""Constraint groups benchmark: worker throughput with limited runs beside unlimited ones.

    .venv/bin/python bench/limits.py [--n 2000] [--dbs sqlite,postgres] [--rounds 2]

In one run, per database and concurrency, the no-op throughput of ``tasks_worker`` for
three workloads of ``--n`` runs each, every workload in its own throwaway database,
interleaved over ``--rounds`` rounds (the machine is shared; the figures of one round
are compared with each other):

- ``noop``: unlimited runs (the figure of bench/workers.py);
- ``keys``: ``Concurrency(1, key="{key}")`` over 1,000 distinct keys (two runs per key
  at n=2000: half wait for their key and are admitted when the first one ends);
- ``hot``: ``Concurrency(4, key="{key}")``, every run on the same key.

Prints a Markdown table with the ratio of each limited workload to ``noop``; the issue's
target is ≥ 0.80 for ``keys``. Measured by bench/driver.py (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(ROOT))

from bench.services import flushed_redis, postgres_available, temp_postgres_db  # noqa: E402
from bench.workers import REDIS_BASE, run_driver  # noqa: E402

WORKLOADS = ("noop", "keys", "hot")
TARGET = 0.80


def measure(db: str, workload: str, args: argparse.Namespace, logdir: Path) -> dict:
    os.environ["BENCH_WORKLOAD"] = workload  # run_driver passes the environment on
    with flushed_redis([REDIS_BASE]), temp_postgres_db(f"live{workload}", db) as pg_name:
        name = pg_name or str(logdir / f"{workload}-{time.monotonic_ns()}.sqlite3")
        return run_driver("live", db, name, REDIS_BASE, args, logdir)


def table(results: dict[tuple[str, str], list[dict]], dbs: list[str],
          levels: list[str]) -> str:
    lines = ["| db | round | workload | " + " | ".join(f"c{c} jobs/s | c{c} ÷ noop"
                                                     for c in levels) + " |",
             "|---|---|---|" + "---|---|" * len(levels)]
    for db in dbs:
        for index in range(len(results.get((db, "noop"), []))):
            base = results[(db, "noop")][index]
            for workload in WORKLOADS:
                result = results[(db, workload)][index]
                cells = []
                for c in levels:
                    ours = result.get("phases", {}).get(c, {}).get("jobs_per_s")
                    ref = base.get("phases", {}).get(c, {}).get("jobs_per_s")
                    cells.append(f"{ours:,.0f}" if ours else result.get("error", "-"))
                    cells.append(f"{ours / ref:.2f}" if ours and ref else "")
                lines.append(f"| {db} | {index + 1} | {workload} | " + " | ".join(cells) + " |")
    if len(results.get((dbs[0], "noop"), []) if dbs else []) > 1:
        lines += ["", "Median ratio over the rounds (each round's limited figure ÷ its own noop):",
                  "", "| db | workload | " + " | ".join(f"c{c} ÷ noop" for c in levels) + " |",
                  "|---|---|" + "---|" * len(levels)]
        for db in dbs:
            for workload in WORKLOADS[1:]:
                cells = [_median_ratio(results, db, workload, c) for c in levels]
                lines.append(f"| {db} | {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median_ratio(results: dict[tuple[str, str], list[dict]], db: str, workload: str,
                  level: str) -> str:
    ratios = []
    for base, result in zip(results.get((db, "noop"), []), results.get((db, workload), []),
                            strict=False):
        ours = result.get("phases", {}).get(level, {}).get("jobs_per_s")
        ref = base.get("phases", {}).get(level, {}).get("jobs_per_s")
        if ours and ref:
            ratios.append(ours / ref)
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="runs per throughput phase")
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    args.samples, args.latency_at, args.phase_timeout = 0, 1, 30 + args.n / 10
    dbs = [d for d in args.dbs.split(",") if d]
    if "postgres" in dbs and not postgres_available():
        dbs.remove("postgres")
        print("PostgreSQL at 127.0.0.1:5432 unreachable: skipped.", file=sys.stderr)
    levels = args.concurrency.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tasks-live-bench-limits-") as tmp:
        for _ in range(args.rounds):
            for db in dbs:
                for workload in WORKLOADS:
                    print(f"… {workload} on {db}", file=sys.stderr, flush=True)
                    result = measure(db, workload, args, Path(tmp))
                    print(f"   {result.get('error') or result['phases']}", file=sys.stderr,
                          flush=True)
                    results.setdefault((db, workload), []).append(result)
    text = (f"Constraint groups: {args.n:,} no-ops per phase, {args.rounds} interleaved rounds, "
            f"{round(time.monotonic() - started)} s in all. Target: keys ÷ noop ≥ "
            f"{TARGET:.2f}.\n\n" + table(results, dbs, levels))
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
