"""Benchmark one system on one database; prints one ``BENCH_RESULT {json}`` line.

Run by ``bench/workers.py`` with the system's settings in the environment (see
``bench/settings.py``); the database already exists and is empty.

Per concurrency level: enqueue ``--n`` no-ops, start the worker(s), and time from the
first handler start (reported by the handler itself, :mod:`bench.mark`) to the moment
the system's result store holds all ``n`` completions. With the worker(s) of
``--latency-at`` concurrency still running and idle, enqueue one no-op at a time and
measure ``time.time()`` before the enqueue call → ``time.time()`` at handler start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.01  # seconds between two completion counts


class Workers:
    """The worker process(es) of one phase, each in its own session so all children stop."""

    def __init__(self, cmds: list[list[str]], env: dict[str, str], logdir: Path, name: str):
        self.logs = [logdir / f"{name}-{i}.log" for i in range(len(cmds))]
        self.procs = []
        for cmd, log in zip(cmds, self.logs, strict=True):
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(
                    cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {proc.args} exited with {proc.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        """User+system CPU of every process in the workers' sessions (reaped children too)."""
        groups = {proc.pid for proc in self.procs}
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(fields[2]) in groups:  # pgrp
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / tick

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of its session (pool children) goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def wait_count(system, target: int, deadline: float, workers: Workers, on_poll=None) -> int:
    done = system.completed()
    while done < target and time.monotonic() < deadline:
        if on_poll:
            on_poll()
        time.sleep(POLL)
        workers.check_alive()
        done = system.completed()
    return done


def throughput(system, marks, workers: Workers, n: int, base: int, tag: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    cpu_at_start: list[float] = []

    def note_first_start() -> None:  # CPU used before the first pickup is start-up, not work
        if not cpu_at_start and marks.first(tag) is not None:
            cpu_at_start.append(workers.cpu_seconds())

    done = wait_count(system, base + n, deadline, workers, note_first_start)
    end = time.time()
    cpu = workers.cpu_seconds() - cpu_at_start[0] if cpu_at_start else None
    first = marks.first(tag)
    if first is None:
        return {"error": "no handler started", "completed": done - base}
    elapsed = end - first
    return {
        "jobs_per_s": (done - base) / elapsed if elapsed > 0 else None,
        "completed": done - base,
        "n": n,
        "seconds": round(elapsed, 3),
        "cpu_ms_per_job": cpu * 1000 / (done - base) if cpu is not None and done > base else None,
        "timed_out": done < base + n,
    }


def percentile(values: list[float], p: float) -> float:
    # Nearest rank: the smallest value with at least p% of the samples at or below it.
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def latency(system, marks, workers: Workers, samples: int, tag0: int, timeout: float) -> dict:
    time.sleep(0.5)  # let the worker fall idle after the throughput phase
    values: list[float] = []
    enqueue: list[float] = []  # how long the enqueue call itself took (part of the latency)
    missed = 0
    for i in range(samples):
        workers.check_alive()
        before = system.completed()
        # Idle gaps longer than any peer's poll period (1 s), so pickups land at random phases.
        time.sleep(random.uniform(0.05, 1.05))
        tag = tag0 + i
        t0 = time.time()
        system.enqueue_one(tag)
        enqueue.append(time.time() - t0)
        started = marks.wait(tag, timeout)
        if started is None:
            missed += 1
            continue
        values.append(started - t0)
        wait_count(system, before + 1, time.monotonic() + timeout, workers)
    if not values:
        return {"error": f"no pickup within {timeout}s", "missed": missed}
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "mean_ms": sum(values) / len(values) * 1000,
        "enqueue_p50_ms": percentile(enqueue, 50) * 1000,
        "samples": len(values),
        "missed": missed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--latency-at", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=180.0, help="per throughput phase")
    parser.add_argument("--logdir", type=Path, required=True)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command

    from bench.mark import PORT_ENV, Marks
    from bench.systems import SYSTEMS

    system = SYSTEMS[args.system]
    result: dict = {"system": system.key, "db": os.environ.get("BENCH_DB"), "phases": {}}
    try:
        if system.uses_db:
            call_command("migrate", verbosity=0)
        marks = Marks()
        for c in (int(x) for x in args.concurrency.split(",")):
            env = {**os.environ, PORT_ENV: str(marks.port), "BENCH_CONCURRENCY": str(c),
                   "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
            base = system.completed()
            system.enqueue_many(args.n, tag=c)
            name = f"{system.key}-{result['db']}-c{c}"
            workers = Workers(system.worker_cmd(c), env, args.logdir, name)
            try:
                phase = throughput(system, marks, workers, args.n, base, c, args.timeout)
                if c == args.latency_at and args.samples:
                    phase["latency"] = latency(system, marks, workers, args.samples,
                                               tag0=1000 * (c + 1), timeout=5.0)
            finally:
                workers.stop()
            result["phases"][str(c)] = phase
            print(f"{name}: {json.dumps(phase)}", file=sys.stderr, flush=True)
    except Exception as exc:  # reported in the table, not a crash of the whole benchmark
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
