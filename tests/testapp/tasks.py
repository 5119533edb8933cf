"""Handlers the tests start. They record calls in files outside the database under test."""

import asyncio
import dataclasses
import enum
import os
import time
from pathlib import Path

from django_tasks_live import limits, progress, task
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


@task("tally")
def tally(ctx, n: int, count: int = 0, delay: float = 0.0):
    """Records its call (for exactly-once checks) after ``count`` progress steps."""
    for i in range(count):
        ctx.progress("counting", i + 1, count)
        time.sleep(delay)
    _record("tally", str(n))
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


@task("say")
def say(ctx, message: str = "", seconds: float = 5.0):
    """Reports ``message`` as its progress, then waits (the admin's live-DOM tests)."""
    ctx.progress(message, 1, 2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(0.02)


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


class _StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


@task("hostile-text")
def hostile_text(ctx, where: str):
    """What no database stores, made by the handler (start() refuses it as input):
    a lone surrogate in progress, exception text, result; an exception whose __str__
    raises; a result nested 2,000 deep."""
    _record("hostile-text", where)
    text = "x" + chr(0xD800) + "y"
    if where == "progress":
        ctx.progress(text, 1, 2)
    if where == "error":
        raise ValueError(text)
    if where == "str-raises":
        raise _StrRaises()
    if where == "deep-result":
        deep: list = []
        for _ in range(2000):
            deep = [deep]
        return deep
    return text if where == "result" else "ok"


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


@task("reports")
def reports(ctx, seconds: float = 1.0):
    """Reports progress as it begins (which records it as running), then works."""
    _record("reports", f"{ctx.run.id}:{ctx.run.attempt}")
    ctx.progress("began")
    time.sleep(seconds)
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


@task("durable", retries=2, backoff="fixed", backoff_base=0)
def durable(ctx, fail_on_attempt: int = 0, hold_on_attempt: int = 0, cooldown: float = 0.0):
    """Durable steps: each step body records its call; the run may fail, hold (for a
    SIGKILL) or sleep between the steps."""
    def fetch():
        _record("durable-fetch", str(ctx.run.id))
        return {"rows": 3, "attempt": ctx.run.attempt}

    fetched = ctx.step_run("fetch", fetch)
    if ctx.run.attempt == fail_on_attempt:
        raise RuntimeError(f"failed after fetch on attempt {ctx.run.attempt}")
    if ctx.run.attempt == hold_on_attempt:
        _record("durable-held", str(ctx.run.id))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the test kills the worker
            ctx.check()
            time.sleep(0.02)
    if cooldown:
        ctx.sleep("cooldown", cooldown)

    def store_rows():
        _record("durable-store", str(ctx.run.id))
        return fetched["rows"] * 2

    stored = ctx.step_run("store", store_rows)
    return {"fetched": fetched, "stored": stored, "attempt": ctx.run.attempt}


@task("async-durable")
async def async_durable(ctx, cooldown: float = 0.0):
    async def fetch():
        _record("async-durable-fetch", str(ctx.run.id))
        return 21

    value = await ctx.astep_run("fetch", fetch)
    if cooldown:
        await ctx.asleep("cooldown", cooldown)
    return value * 2


@task("make-report")
def make_report(ctx, title: str, count: int, ratio: float = 0.5, urgent: bool = False,
                tags: list | None = None):
    """Needs arguments: {% task_item %} renders a form for them."""
    ctx.progress(f"Writing {title}", 1, 1)
    return {"title": title, "count": count, "ratio": ratio, "urgent": urgent, "tags": tags or []}


@task("keep")
def keep(ctx, value=None):
    """Returns its argument: an unannotated parameter takes any JSON."""
    return value


@task("acknowledges-cancel")
def acknowledges_cancel(ctx, seconds: float = 30.0, cancel_self: bool = False):
    """Sees the cancel with is_canceled() and returns what it did so far."""
    _record("acknowledges-cancel", str(ctx.run.id))
    if cancel_self:
        from django_tasks_live import cancel

        cancel(ctx.run.id)  # as if someone pressed Cancel while it ran
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.is_canceled():
            return {"done": done}
        done += 1
        time.sleep(0.02)
    return {"done": done}


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass
class Box:
    width: int
    height: int = 1


@task("typed")
def typed(ctx, mode: Mode, box: Box, tags: list[str] | None = None):
    """Annotated with an enum and a dataclass: it gets them, not their JSON."""
    return {"mode": f"{type(mode).__name__}.{mode.name}", "area": box.width * box.height, "tags": tags}


@task("unique-sync", unique_key="sync:{account}")
def unique_sync(ctx, account: int, full: bool = False):
    return account


@task("unique-args", unique=True)
def unique_args(ctx, n: int = 0):
    return n


@task("unique-active", unique=True, unique_while="active")
def unique_active(ctx, n: int = 0):
    return n


@task("unique-maybe", unique_key=lambda n=0: None if n < 0 else f"n{n}")
def unique_maybe(ctx, n: int = 0):
    return n


@task("debounced", debounce=60)
def debounced(ctx, value: int = 0):
    return value


@task("debounced-doc", debounce=60, unique_key="{doc}")
def debounced_doc(ctx, doc: str, text: str = ""):
    return text


@task("once", run_once=True, unique_key="{account}")
def once(ctx, account: int, fail: bool = False):
    _record("once", str(account))
    if fail:
        raise RuntimeError("not this time")
    return account


@task("double")
def double(ctx, x: int):
    return x * 2


@task("total")
def total(ctx, results: list, bonus: int = 0):
    return sum(results) + bonus


@task("explode")
def explode(ctx, *args):
    raise ValueError("boom")


def _still_wanted(ctx, item: str = "", verdict: str = "yes"):
    """should_execute of "maybe": its verdict comes from the run's own arguments."""
    _record("asked", f"{ctx.run.id}:{item}")
    if verdict == "raise":
        raise LookupError(f"cannot tell whether {item} is wanted")
    return {"yes": True, "no": False, "three": 3}.get(verdict, verdict)


@task("maybe", should_execute=_still_wanted)
def maybe(ctx, item: str = "", verdict: str = "yes"):
    """Runs only while its item is still wanted (``verdict``: yes, no, a reason...)."""
    _record("maybe", item)
    return item


# ---------------------------------------------------------------- constraint groups
# Each records "<key>:<run id>:<start>:<end>" (time.time()) under its record name, so
# tests can check from outside the database that no limit was ever exceeded.


def _spanned(record: str):
    def handler(ctx, key: str = "", sleep: float = 0.05, fail: bool = False):
        start = time.time()
        time.sleep(sleep)
        _record(record, f"{key}:{ctx.run.id}:{start!r}:{time.time()!r}")
        if fail:
            raise RuntimeError("failed on purpose")
        return key

    handler.__name__ = handler.__qualname__ = f"{record.replace('-', '_')}_handler"
    return handler


def _key_or_none(key: str = "", **_: object) -> str | None:
    if key == "boom":
        raise LookupError("no such key")
    return key or None  # no key: exempt


per_key = task("per-key", retries=1, backoff="fixed", backoff_base=0.05,
               limits=[limits.Concurrency(2, key="{key}")])(_spanned("per-key"))
exclusive = task("exclusive", limits=[limits.Concurrency(1, key=_key_or_none)])(
    _spanned("exclusive"))
dns_resolve = task("dns-resolve", limits=[limits.Concurrency(3, group="dns")])(_spanned("dns"))
dns_whois = task("dns-whois", limits=[limits.Concurrency(3, group="dns")])(_spanned("dns"))
rated = task("rated", limits=[limits.Rate(2, per=1.0, key="{key}")])(_spanned("rated"))
cooled = task("cooled", limits=[limits.Cooldown(0.3, key="{key}")])(_spanned("cooled"))
both = task("both", limits=[limits.Concurrency(1, key="{key}"),
                            limits.Concurrency(2, group="both-all")])(_spanned("both"))
# Two tasks sharing one per-site key; only "site-wide" also needs the whole group's slot.
site_wide = task("site-wide", limits=[limits.Concurrency(1, key="{key}", group="site"),
                                      limits.Concurrency(1, group="site-all")])(_spanned("site"))
site_one = task("site-one", limits=[limits.Concurrency(1, key="{key}", group="site")])(
    _spanned("site"))
