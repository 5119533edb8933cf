"""Demo handlers: each shows one feature on the demo page and in the admin."""

from __future__ import annotations

import random
import time

from django_tasks_live import progress, task
from django_tasks_live.compat import task as django_task


@task(
    "demo.import",
    timeout=600,
    steps={"download": 20, "parse": 50, "save": 30},
)
def slow_import(ctx, rows: int = 200, delay: float = 0.03):
    """Import rows in three weighted steps, reporting progress as it goes."""
    ctx.step("download", "Fetching the file")
    for _ in range(20):
        ctx.check()
        time.sleep(delay)
    ctx.step("parse", "Parsing rows")
    for i in range(rows):
        ctx.check()  # stops here when canceled or timed out
        ctx.progress(f"Parsed {i + 1} of {rows} rows", i + 1, rows)
        time.sleep(delay)
    ctx.step("save", "Saving")
    time.sleep(delay * 10)
    return {"imported": rows}


@task("demo.flaky", retries=3, backoff="exponential", backoff_base=1.0)
def flaky(ctx, fail_times: int = 2):
    """Fails its first attempts, then succeeds: watch the retries in the timeline."""
    ctx.progress(f"Attempt {ctx.run.attempt} of {ctx.run.max_attempts}")
    time.sleep(0.5)
    if ctx.run.attempt <= fail_times:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.run.attempt})")
    return {"succeeded_on_attempt": ctx.run.attempt}


@task("demo.long", timeout=3600)
def long_job(ctx, seconds: int = 300):
    """Runs for minutes: press Cancel and it stops at its next check."""
    for second in range(seconds):
        ctx.check()
        ctx.progress(f"{seconds - second}s left", second, seconds)
        time.sleep(1)
    return {"seconds": seconds}


@task("demo.tick", cron="* * * * *")
def tick(ctx):
    """Runs every minute from its cron schedule (see Schedules in the admin)."""
    ctx.progress("tick", 1, 1)
    return {"at": time.time()}


@django_task
def send_report(recipients: int = 25) -> dict:
    """A plain django.tasks function: ``send_report.enqueue(recipients=10)``."""
    for sent in range(1, recipients + 1):
        progress(f"Sent {sent} of {recipients}", sent, recipients)
        time.sleep(random.uniform(0.02, 0.1))
    return {"sent": recipients}
