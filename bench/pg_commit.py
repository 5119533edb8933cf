"""The floor under idle pickup on PostgreSQL: what one round trip and one durable commit
cost on this machine, hot (back to back) and cold (after an idle pause, as in the
pickup benchmark).

    .venv/bin/python bench/pg_commit.py [--samples 40]

An idle pickup needs two durable commits in a row: the enqueue (``start()``) and the
claim (a run must never be handed to a handler before its claim is durable, or a
database crash could hand it out twice). Plain psycopg, no Django, a throwaway table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg

DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def median_ms(conn: psycopg.Connection, sql: str, samples: int, cold: bool) -> float:
    times = []
    for _ in range(samples):
        if cold:
            time.sleep(random.uniform(0.05, 0.5))
        start = time.perf_counter()
        conn.execute(sql)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_floor (id serial PRIMARY KEY, v text)")
        try:
            settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                        for name in ("synchronous_commit", "wal_sync_method")}
            print(f"PostgreSQL {conn.info.server_version}, {settings}; medians of {args.samples}")
            print("| | round trip (SELECT 1) | durable INSERT (autocommit) |")
            print("|---|---|---|")
            for cold in (False, True):
                trip = median_ms(conn, "SELECT 1", args.samples, cold)
                durable = median_ms(conn, "INSERT INTO bench_commit_floor (v) VALUES ('x')",
                                    args.samples, cold)
                print(f"| {'cold' if cold else 'hot'} | {trip:.2f} ms | {durable:.2f} ms |")
        finally:
            conn.execute("DROP TABLE bench_commit_floor")


if __name__ == "__main__":
    main()
