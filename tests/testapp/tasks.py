"""Handlers the tests start. They record calls in files outside the database under test."""

import asyncio
import os
import time
from pathlib import Path

from django_tasks_live import progress, task
from django_tasks_live.compat import task as django_task


def _record(name: str, value: str) -> None:
    directory = os.environ.get("TASKS_LIVE_CALLS_DIR")
    if directory:
        with open(Path(directory) / f"{name}-{os.getpid()}.log", "a") as fh:
            fh.write(value + "\n")


@task("noop")
def noop(ctx, n: int = 0):
    _record("noop", str(n))
    return n


@task("echo")
def echo(ctx, payload: str = ""):
    return payload


@task("add")
def add(ctx, a: int, b: int):
    return a + b


@task("import-data", timeout=300, retries=3, backoff="exponential",
      steps={"download": 30, "parse": 70})
def import_data(ctx, rows: int = 100, delay: float = 0.0):
    ctx.step("download")
    ctx.step("parse")
    for i in range(rows):
        ctx.check()
        ctx.progress("Importing", i + 1, rows)
        if delay:
            time.sleep(delay)
    return {"imported": rows}


@task("sleepy")
def sleepy(ctx, seconds: float = 1.0, cooperative: bool = True):
    _record("sleepy", str(ctx.run.id))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cooperative:
            ctx.check()
        time.sleep(0.02)
    return "slept"


@task("hang", timeout=1)
def hang(ctx):
    while True:  # never checks ctx: only a hard stop ends it
        time.sleep(0.05)


@task("coop-timeout", timeout=0.5)
def coop_timeout(ctx):
    while True:
        ctx.check()
        time.sleep(0.02)


@task("flaky", retries=2, backoff="fixed", backoff_base=0.05)
def flaky(ctx, fail_times: int = 1):
    if ctx.run.attempt <= fail_times:
        raise RuntimeError(f"attempt {ctx.run.attempt} failed")
    return ctx.run.attempt


@task("only-value-errors", retries=3, retry_on=[ValueError], backoff="fixed", backoff_base=0.01)
def only_value_errors(ctx, exc: str = "value"):
    raise (ValueError if exc == "value" else KeyError)("boom")


@task("async-add")
async def async_add(ctx, a: int, b: int):
    await asyncio.sleep(0.01)
    await ctx.aprogress("adding", 1, 1)
    return a + b


@task("bad-result")
def bad_result(ctx):
    return {1, 2}


@task("nul-text")
def nul_text(ctx, where: str):
    """Text with a NUL character (PostgreSQL refuses it) from every place a handler writes."""
    if where == "progress":
        ctx.progress("half\x00way", 1, 2)
    if where == "error":
        raise ValueError("bad\x00input")
    return "a\x00b" if where == "result" else "ok"


@task("every-minute", cron="* * * * *")
def every_minute(ctx):
    _record("every-minute", str(ctx.run.id))


@django_task
def django_add(a: int, b: int) -> int:
    progress("adding", 1, 1)
    return a + b


@django_task(takes_context=True)
def django_with_context(context, value: str) -> str:
    return f"{value}:{context.attempt}"


@django_task
def django_fail() -> None:
    raise ValueError("django task failed")


@django_task
async def django_async(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@task("resumable", retries=2)
def resumable(ctx, seconds: float = 1.0):
    """A run worth retrying after its worker is lost (records one call per attempt)."""
    _record("resumable", f"{ctx.run.id}:{ctx.run.attempt}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(0.02)
    return ctx.run.attempt


@task("async-sleepy", timeout=0.2)
async def async_sleepy(ctx, seconds: float = 5.0):
    """An async handler that never checks ctx: only wait_for's timeout ends it."""
    await asyncio.sleep(seconds)


@task("fail-on-cancel", retries=3, backoff="fixed", backoff_base=0.01)
def fail_on_cancel(ctx):
    """Notices a cancel request and fails instead of raising Canceled (a retryable error)."""
    from django_tasks_live import cancel

    cancel(ctx.run.id)  # as if someone pressed Cancel while it ran
    while not ctx.is_canceled():
        time.sleep(0.01)
    raise RuntimeError("stopped half-way")


@task("cancels-itself")
def cancels_itself(ctx):
    from django_tasks_live import cancel

    cancel(ctx.run.id)
    ctx.progress("after the request")  # the write reports the request back
    ctx.check()
    return "not reached"


@task("fails-silently")
def fails_silently(ctx):
    raise LookupError()
