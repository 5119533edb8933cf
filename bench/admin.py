"""Admin console pages at 1M runs: times and the count query plans (not a test).

    .venv/bin/python bench/admin.py [--rows 1000000] [--db sqlite|postgres]

Fills a scratch database (a temp SQLite file, or PostgreSQL ``tl_admin_bench``) with
bulk SQL: mixed statuses, 50 tasks, 5 queues, a tenant label; then requests every
admin page through Django's test client as a superuser and prints the median of 5
requests each, plus the plans of the capped status counts. Figures go in the notes,
never into assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import open_scratch_database  # noqa: E402

REPEAT = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="sqlite")
    args = parser.parse_args()
    open_scratch_database(args.db, "tl_admin_bench")
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    started = time.monotonic()
    fill(connection, args.rows)
    with connection.cursor() as cursor:
        # What autovacuum would have done to a table this old (visibility map, stats).
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
    print(f"filled {args.rows:,} runs in {time.monotonic() - started:.1f}s ({connection.vendor})")
    client = Client()
    client.force_login(User.objects.create_superuser("bench", "b@example.com", "pw"))
    runs = "/admin/django_tasks_live/run/"
    pages = {
        "changelist (default)": (runs, {}),
        **{f"tab {s}": (runs, {"status__exact": s}) for s in
           ("pending", "running", "retrying", "completed", "failed", "canceled", "timed_out")},
        "filter task": (runs, {"task": "task-7"}),
        "filter label tenant:t3": (runs, {"label": "tenant:t3"}),
        "filter queue + failed": (runs, {"queue": "q2", "status__exact": "failed"}),
        "search id": (runs, {"q": str(args.rows // 2)}),
        "search error words": (runs, {"q": "timeout"}),
        "run page": (f"{runs}{args.rows // 2}/change/", {}),
        "tasks": ("/admin/django_tasks_live/task/", {}),
    }
    print(f"\n{'page':32} {'median ms':>10}  (of {REPEAT})")
    for title, (url, params) in pages.items():
        report(title, lambda url=url, params=params: client.get(url, params))
    report("all-matching confirm (failed)", lambda: client.post(
        runs + "?status__exact=failed",
        {"action": "cancel_runs", "select_across": "1", "index": "0", "_selected_action": ["1"]}))
    dashboard(client)
    explain(connection)


def dashboard(client) -> None:
    """The dashboard and a metrics scrape: the first read (it rolls for ROLL_BUDGET), the
    day's backfill, then fresh reads (the shared snapshot dropped before each request)
    and the cached read every other viewer gets within the interval."""
    from django_tasks_live import rollups, stats

    url = "/admin/django_tasks_live/run/dashboard/"
    stats.reset()
    report("dashboard, first read (rolls)", lambda: client.get(url), repeat=1)
    t0, minutes = time.perf_counter(), 0
    while rolled := rollups.roll(budget=5):
        minutes += rolled
    print(f"{'rollup backfill of the day':32} {(time.perf_counter() - t0) * 1000:10.1f}"
          f"  ({minutes} minutes)")

    def fresh(path: str):
        stats._cached = None  # the next interval: a real read
        return client.get(path)

    report("dashboard (fresh read)", lambda: fresh(url))
    report("dashboard (shared read)", lambda: client.get(url))
    report("metrics scrape (fresh read)", lambda: fresh("/tasks/metrics"))


def report(title: str, request, repeat: int = REPEAT) -> None:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = request()
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (title, response.status_code)
    print(f"{title:32} {statistics.median(times):10.1f}")


def explain(connection) -> None:
    from django.db import transaction

    from django_tasks_live import store

    prefix = "EXPLAIN ANALYZE " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    queries = {
        "capped count, status=completed": store.runs(status=["completed"]).order_by()[:10_001],
        "capped count, task-7 failed": store.runs(task=["task-7"], status=["failed"]).order_by()[:10_001],
    }
    for title, qs in queries.items():
        with transaction.atomic(), connection.cursor() as cursor:
            sql, params = qs.values("id").query.sql_with_params()
            cursor.execute(prefix + f"SELECT COUNT(*) FROM ({sql}) sub", params)
            plan = "\n".join("  " + " | ".join(str(c) for c in row) for row in cursor.fetchall())
        print(f"\n== {title}\n{plan}")


def fill(connection, rows: int) -> None:
    """Mostly finished runs, some failed/canceled/timed out, a few thousand waiting or
    running; task-0..49, queues q0..q4, label tenant t0..t9, a short error text. Runs
    that ran finished over the last day (the dashboard's rollups and the Tasks page's
    durations have something to read), each 0-6 s long."""
    statuses = ["completed"] * 88 + ["failed"] * 5 + ["canceled"] * 2 + ["timed_out", "retrying"]
    statuses += ["pending"] * 2 + ["running"]
    case = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(statuses))
    n = len(statuses)
    if connection.vendor == "postgresql":
        series, now = f"generate_series(1, {rows}) AS g(i)", "now()"
        labels = "json_build_object('tenant', 't' || (i % 10))::jsonb"
        finished = "now() - (i % 86400) * interval '1 second'"
        started = "now() - ((i % 86400) + (i % 7)) * interval '1 second'"
    else:
        series = (f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                  f"WHERE i < {rows}) SELECT i FROM s)")
        now = "CURRENT_TIMESTAMP"
        labels = "json_object('tenant', 't' || (i % 10))"
        # The text Django stores (microseconds), so range lookups compare like its own.
        finished = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i % 86400) || ' seconds')"
        started = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ((i % 86400) + (i % 7)) || ' seconds')"
    ran = f"i % {n} NOT IN (93, 94, 97, 98)"  # every status but canceled and pending
    given = {
        "task_name": "'task-' || (i % 50)", "status": f"CASE (i % {n}) {case} END",
        "queue": "'q' || (i % 5)", "run_after": now, "created_at": now, "updated_at": now,
        "attempt": "1", "labels": labels,
        "error": f"CASE WHEN i % {n} BETWEEN 88 AND 92 THEN 'upstream timeout ' || i ELSE '' END",
        "finished_at": f"CASE WHEN i % {n} < 96 THEN {finished} END",
        "started_at": f"CASE WHEN {ran} THEN {started} END",
    }
    columns = {**defaults(connection), **given}
    sql = f"""
        INSERT INTO django_tasks_live_run ({", ".join(columns)})
        SELECT {", ".join(columns.values())} FROM {series}
    """
    with connection.cursor() as cursor:
        cursor.execute(sql)
        # 10 events per run would be 10M rows; the pages read at most 50 per run, so the
        # run page is measured on a run with 10 events like the rest would have.
        ten = series.replace(str(rows), "10")
        cursor.execute(f"""INSERT INTO django_tasks_live_runevent
            (run_id, kind, status, data, created_at)
            SELECT {rows // 2}, 'progress', 'running', '{{}}', {now} FROM {ten}""")


def defaults(connection) -> dict[str, str]:
    """Column -> SQL literal of the model default for every NOT NULL column, so the
    fill keeps working as columns are added."""
    import json

    from django_tasks_live.models import Run

    out = {}
    for field in Run._meta.concrete_fields:
        if field.primary_key or field.null:
            continue
        value = field.get_default()
        if isinstance(value, bool):
            literal = ("true" if value else "false") if connection.vendor == "postgresql" else str(int(value))
        elif isinstance(value, int | float):
            literal = str(value)
        elif isinstance(value, list | dict):
            literal = "'" + json.dumps(value) + "'"
        elif isinstance(value, str):
            literal = "'" + value.replace("'", "''") + "'"
        else:  # a datetime default (timezone.now): the SELECT gives these
            continue
        out[field.column] = literal
    return out


if __name__ == "__main__":
    main()
