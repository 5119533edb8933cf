"""Show that the claim query and the per-status listing use indexes at 1M runs.

    .venv/bin/python bench/explain.py [--rows 1000000] [--db postgres|sqlite]

Fills a scratch database (PostgreSQL ``tl_explain`` or a temp SQLite file) with runs in a
realistic mix of statuses, then prints the query plans of the queries the worker and
the admin run most. Not a test: plans are for people to read (and figures for notes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import open_scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    open_scratch_database(args.db, "tl_explain")
    from django.db import connection, transaction

    from django_tasks_live import store

    started = time.monotonic()
    fill(connection, args.rows)
    print(f"filled {args.rows:,} runs in {time.monotonic() - started:.1f}s ({connection.vendor})")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    queries = {
        "per-status listing (admin, stream)": store.runs(status=["failed"])[:100],
        "per-task per-status listing": store.runs(task=["task-3"], status=["running"])[:100],
    }
    prefix = "EXPLAIN ANALYZE " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    for title, queues in [("claim, any queue (worker)", None), ("claim, one queue", ["default"])]:
        print(f"\n== {title}\n  " + store.claim_plan(queues, limit=50).replace("\n", "\n  "))
    for title, qs in queries.items():
        with transaction.atomic(), connection.cursor() as cursor:
            sql, params = qs.query.sql_with_params()
            cursor.execute(prefix + sql, params)
            plan = "\n".join("  " + " | ".join(str(c) for c in row) for row in cursor.fetchall())
        print(f"\n== {title}\n{plan}")


def fill(connection, rows: int) -> None:
    """Mostly finished runs, some failed, a few thousand waiting or running."""
    statuses = ["completed"] * 90 + ["failed"] * 5 + ["canceled"] * 2 + ["timed_out"]
    statuses += ["pending", "running"]
    case = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(statuses))
    n = len(statuses)
    if connection.vendor == "postgresql":
        series, now = f"generate_series(1, {rows}) AS g(i)", "now()"
    else:
        series = (f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                  f"WHERE i < {rows}) SELECT i FROM s)")
        now = "CURRENT_TIMESTAMP"
    sql = f"""
        INSERT INTO django_tasks_live_run (task_name, status, kind, backend, args, kwargs, queue,
            priority, run_after, attempt, max_attempts, progress_message, steps, error,
            error_type, traceback, errors, worker_id, worker_ids, created_at, updated_at,
            labels, concurrency_key, claims_lost, executor)
        SELECT 'task-' || (i % 20), CASE (i % {n}) {case} END, 'live', '', '[]', '{{}}',
            'default', 0, {now}, 1, 1, '', '[]', '', '', '', '[]', '', '[]', {now}, {now},
            '{{}}', '', 0, 'builtin'
        FROM {series}
    """
    with connection.cursor() as cursor:
        cursor.execute(sql)


if __name__ == "__main__":
    main()
