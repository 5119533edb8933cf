"""The benchmark's table (Markdown) with ratios against django-tasks-live, and the targets."""

from __future__ import annotations

from typing import Any

from bench.systems import SYSTEMS

OURS = "live"


def _phase(result: dict | None, c: str) -> dict:
    return ((result or {}).get("phases") or {}).get(c) or {}


def _thr(result: dict | None, c: str) -> float | None:
    return _phase(result, c).get("jobs_per_s")


def _lat(result: dict | None, c: str, key: str) -> float | None:
    return (_phase(result, c).get("latency") or {}).get(key)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, peer: float | None) -> str:
    return "—" if not ours or not peer else f"{ours / peer:.2f}x"


def _rows_for(results: list[dict], db: str) -> list[dict]:
    """Results on ``db`` plus the Redis-only peers (the same figures on every database)."""
    return [r for r in results if r.get("db") in (db, "redis")]


def render(results: list[dict], dbs: list[str], meta: dict[str, Any], notes: list[str]) -> str:
    levels = meta["concurrency"].split(",")
    lat_at = str(meta["latency_at"])
    head = ["system"] + [f"c{c} jobs/s" for c in levels] + [f"c{c} CPU ms/job" for c in levels]
    head += [f"idle p50 ms (c{lat_at})", "p99 ms", "enqueue p50 ms"]
    head += [f"ours÷peer c{c}" for c in levels] + ["peer p50÷ours p50"]
    lines = [
        f"Worker benchmark: {meta['n']:,} no-ops per throughput phase, {meta['samples']} idle "
        f"pickups, {meta['seconds']} s in all. jobs/s = completions in the system's result store "
        f"÷ (last completion - first handler start). Ratios > 1 mean django-tasks-live is faster."
        f" CPU ms/job: user+system CPU of the worker processes from first pickup to last"
        f" completion per job (database and Redis servers not included)."
        f" django-tasks-live channel layer: {meta['live_layer']}.",
    ]
    for db in dbs:
        rows = _rows_for(results, db)
        ours = next((r for r in rows if r["system"] == OURS), None)
        lines += ["", f"### {db}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in rows:
            label = SYSTEMS[r["system"]].label + (" (Redis only)" if r["db"] == "redis" else "")
            if r.get("error"):
                label += f" — error: {r['error'][:80]}"
            cells = [label] + [_fmt(_thr(r, c)) for c in levels]
            cells += [_fmt(_phase(r, c).get("cpu_ms_per_job"), 2) for c in levels]
            cells += [_fmt(_lat(r, lat_at, "p50_ms"), 1), _fmt(_lat(r, lat_at, "p99_ms"), 1),
                      _fmt(_lat(r, lat_at, "enqueue_p50_ms"), 1)]
            cells += [_ratio(_thr(ours, c), _thr(r, c)) for c in levels]
            cells += [_ratio(_lat(r, lat_at, "p50_ms"), _lat(ours, lat_at, "p50_ms"))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def targets(results: list[dict], dbs: list[str]) -> str:
    """The issue's targets, each MET or MISSED with the figures behind it."""
    by = {(r["system"], r.get("db")): r for r in results}
    out = ["Targets:"]

    def verdict(ok: bool) -> str:
        return "MET   " if ok else "MISSED"

    levels = sorted({c for r in results for c in (r.get("phases") or {})}, key=int)
    for peer in ("dtdb", "dtdb_default"):
        if "sqlite" not in dbs or (OURS, "sqlite") not in by or (peer, "sqlite") not in by:
            continue
        for c in levels:
            ours, theirs = _thr(by[(OURS, "sqlite")], c), _thr(by[(peer, "sqlite")], c)
            if ours and theirs:
                out.append(f"- {verdict(ours >= 5 * theirs)} SQLite c{c}: >= 5x "
                           f"{SYSTEMS[peer].label}: {ours:,.0f} vs {theirs:,.0f} jobs/s"
                           f" = {ours / theirs:.1f}x")
    if "postgres" in dbs and (OURS, "postgres") in by:
        ours_r = by[(OURS, "postgres")]
        redis_peers = [r for r in results if r["system"] in ("celery", "huey")
                       or (r["system"] == "q2redis" and r.get("db") == "postgres")]
        for c in levels:
            best = max(redis_peers, key=lambda r: _thr(r, c) or 0, default=None)
            ours, peer = _thr(ours_r, c), _thr(best, c)
            if ours and peer:
                out.append(f"- {verdict(ours >= peer)} PostgreSQL c{c}: ≥ fastest Redis peer "
                           f"({SYSTEMS[best['system']].label}): {ours:,.0f} vs {peer:,.0f} jobs/s")
        lat = [(c, _lat(ours_r, c, "p50_ms")) for c in levels if _lat(ours_r, c, "p50_ms")]
        for c, p50 in lat:
            out.append(f"- {verdict(p50 <= 3.0)} PostgreSQL idle pickup p50 ≤ 3 ms (c{c}): "
                       f"{p50:.1f} ms")
    return "\n".join(out) + "\n"
