"""The public verbs: start, cancel, rerun, wait (and their async twins)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from . import flows, pauses, store, waiting
from .arguments import validate
from .jsonvalues import ensure_json, storable_text
from .models import Run
from .queues import check_queue
from .registry import TaskSpec, registry
from .states import CLAIMABLE, TERMINAL, IllegalTransition, Status

MAX_NAME = 100
# (name, kwargs) or (name, args, kwargs)
Call = tuple[str, Mapping[str, Any]] | tuple[str, Sequence[Any], Mapping[str, Any]]


def _check_name(value: Any, what: str) -> str:
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME
            or storable_text(value) != value):
        raise ValueError(
            f"{what} must be a non-empty string of at most {MAX_NAME} characters "
            f"(no NUL, no lone surrogate), got {value!r}."
        )
    return value


def _run_id(run: Run | int | str) -> int:
    if isinstance(run, Run):
        return run.pk
    if isinstance(run, bool) or not isinstance(run, int | str):
        raise TypeError(f"A run id must be an int (or a Run), got {run!r}.")
    try:
        value = int(run)
    except ValueError:
        raise ValueError(f"{run!r} is not a run id.") from None
    if value <= 0:
        raise ValueError(f"{run!r} is not a run id.")
    return value


def _get(run_id: int) -> Run:
    try:
        return store.get_run(run_id)
    except Run.DoesNotExist:
        raise Run.DoesNotExist(f"Run {run_id} does not exist.") from None


def _seconds(value: Any, zero_ok: bool) -> bool:
    """True if ``value`` is a finite number of seconds (> 0, or >= 0 with ``zero_ok``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= 0 if zero_ok else value > 0


@dataclass(frozen=True)
class StartOptions:
    """How a run is started; ``tasks_live.using(queue="high").start("name", ...)``."""

    queue: str | None = None
    priority: int | None = None
    run_after: dt.datetime | None = None
    delay: float | None = None
    timeout: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: Any = None
    unique_key: str | None = None

    def __post_init__(self) -> None:
        if self.queue is not None:
            check_queue(self.queue)
        if self.priority is not None and (
            not isinstance(self.priority, int) or isinstance(self.priority, bool)
            or not -100 <= self.priority <= 100
        ):
            raise ValueError(f"priority must be an integer from -100 to 100, got {self.priority!r}.")
        if self.run_after is not None:
            if not isinstance(self.run_after, dt.datetime):
                raise TypeError(f"run_after must be a datetime, got {self.run_after!r}.")
            if settings.USE_TZ and timezone.is_naive(self.run_after):
                raise ValueError("run_after must be an aware datetime.")
        if self.delay is not None and not _seconds(self.delay, zero_ok=True):
            raise ValueError(f"delay must be a non-negative number of seconds, got {self.delay!r}.")
        if self.delay is not None and self.run_after is not None:
            raise ValueError("Give run_after or delay, not both.")
        if self.timeout is not None and not _seconds(self.timeout, zero_ok=False):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if not isinstance(self.labels, Mapping):
            raise TypeError(f"labels must be a mapping of str to str, got {self.labels!r}.")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or ":" in key:
                raise ValueError(
                    f"labels must map non-empty strings without ':' to strings, got {key!r}: {value!r}."
                )
        ensure_json(dict(self.labels), "labels")
        if self.unique_key is not None:
            _check_name(self.unique_key, "unique_key")

    def new_run(self, spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> store.NewRun:
        args, kwargs = validate(spec, args, kwargs)
        return self._build(spec, args, kwargs)

    def _build(self, spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> store.NewRun:
        """The run of checked arguments with these options."""
        queue = check_queue(self.queue or spec.queue, f"task {spec.name!r} queue")
        run_after = self.run_after
        if self.delay:
            run_after = timezone.now() + dt.timedelta(seconds=self.delay)
        return store.NewRun(
            task_name=spec.name,
            kind=spec.kind,
            backend=spec.backend,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=spec.priority if self.priority is None else self.priority,
            run_after=run_after,
            timeout=self.timeout,
            max_attempts=spec.max_attempts,
            steps=[{"name": n, "weight": w, "state": "pending"} for n, w in spec.steps],
            labels=dict(self.labels),
            unique_key=self.unique_key,
            owner_id=getattr(self.owner, "pk", self.owner),
        )

    def start(self, name: str, /, *args: Any, **kwargs: Any) -> Run:
        """Start one run of the task ``name`` with these handler arguments.

        For a unique, debounced or run-once task this may return an existing run
        (``run.created`` is False then; :meth:`start_or_get` says it as a pair). With
        the ``unique_key`` option, a start while that key's run is active is refused.
        """
        spec = registry.get(_check_name(name, "task name"))
        new = self.new_run(spec, args, kwargs)
        if spec.unique is not None:
            return self._share(spec, new)[0]
        if self.unique_key is None:
            return _announce(store.create_runs([new]))[0]
        run = store.create_run_once(new)
        if run is None:
            raise ValueError(f"A run with unique_key {self.unique_key!r} is already active.")
        return _announce([run])[0]

    def start_or_get(self, name: str, /, *args: Any, **kwargs: Any) -> tuple[Run, bool]:
        """Like :meth:`start`, returning ``(run, created)``: ``created`` is False when an
        existing run stands for this start (a unique, debounced or run-once task, or the
        ``unique_key`` option while that key's run is active)."""
        spec = registry.get(_check_name(name, "task name"))
        new = self.new_run(spec, args, kwargs)
        if spec.unique is not None:
            return self._share(spec, new)
        if self.unique_key is None:
            return _announce(store.create_runs([new]))[0], True
        return _flagged(*store.start_unique(new))

    def _share(self, spec: TaskSpec, new: store.NewRun) -> tuple[Run, bool]:
        """Start a run of a task with a unique rule, or return the run that stands for it."""
        rule = spec.unique
        assert rule is not None
        if self.unique_key is not None:
            raise ValueError(f"Task {spec.name!r} declares its own unique key; "
                             "do not pass the unique_key option.")
        key = spec.unique_key_for(new.args, new.kwargs)
        if key is None:  # exempt (the key callable said so)
            return store.create_runs([new])[0], True
        if rule.scope == "pending":
            new.pending_key = key
        else:
            new.unique_key = key
        if rule.debounce is not None:
            due = timezone.now() + dt.timedelta(seconds=rule.debounce)
            new.run_after = max(new.run_after or due, due)
        return _flagged(*store.start_unique(new, debounce=rule.debounce is not None,
                                            once=rule.once))

    def start_many(self, calls: Iterable[Call]) -> list[Run]:
        """Start several runs in one transaction: all are created, or none."""
        if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Iterable):
            raise TypeError(f"calls must be an iterable of (name, kwargs) tuples, got {calls!r}.")
        new_runs = [self.new_run(spec, args, kwargs) for spec, args, kwargs in _parse_calls(calls)]
        return _announce(store.create_runs(new_runs)) if new_runs else []

    def chain(self, *calls: Call | str, name: str = "chain") -> Run:
        """Run the calls one after another: each handler gets the previous result as its
        first positional argument (after ``ctx``). Returns the parent run, whose result
        is the last call's; a failing call fails it (naming the call) and ends the chain."""
        parsed = _parse_calls(_flow_calls(calls, "chain"))
        entries = [self._plan_entry(spec, args, kwargs, takes=i > 0)
                   for i, (spec, args, kwargs) in enumerate(parsed)]
        return self._start_flow(flows.plan(flows.CHAIN, entries, None), name)

    def group(self, *calls: Call | str, then: Call | str | None = None, name: str = "group") -> Run:
        """Run the calls in parallel; ``then`` (a call) gets the list of their results, in
        call order, as its first positional argument. Returns the parent run, whose result
        is the join's (without one: the list of results)."""
        parsed = _parse_calls(_flow_calls(calls, "group"))
        entries = [self._plan_entry(spec, args, kwargs, takes=False) for spec, args, kwargs in parsed]
        join = None
        if then is not None:
            [(spec, args, kwargs)] = _parse_calls(_flow_calls((then,), "then"))
            join = self._plan_entry(spec, args, kwargs, takes=True)
        return self._start_flow(flows.plan(flows.GROUP, entries, join), name)

    def _plan_entry(self, spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any],
                    takes: bool) -> dict[str, Any]:
        """A child's plan entry; ``takes``: it gets a result first, which only exists
        later, so now its arity is checked and the rest when it is created."""
        if takes:
            ensure_json(list(args), "args")
            ensure_json(dict(kwargs), "kwargs")
            try:  # the arity only: the result (JSON from the previous handler) comes later
                spec.signature.bind(None, None, *args, **kwargs)  # ctx, then the result
            except TypeError as exc:
                raise TypeError(f"Bad arguments for task {spec.name!r}: {exc}") from None
            new = self._build(spec, args, kwargs)
        else:
            new = self.new_run(spec, args, kwargs)
        return {name: getattr(new, name) for name in flows.PLAN_FIELDS}

    def _start_flow(self, flow_plan: dict[str, Any], name: str, rerun_of: Run | None = None) -> Run:
        _check_name(name, "name")
        parent = store.NewRun(task_name=name, queue=self.queue or "default",
                              labels=dict(self.labels), owner_id=getattr(self.owner, "pk", self.owner),
                              rerun_of_id=rerun_of.pk if rerun_of else None)
        if rerun_of is not None:
            parent.owner_id = rerun_of.owner_id
        return store.create_flow(parent, flow_plan)


def _parse_calls(calls: Iterable[Any]) -> list[tuple[TaskSpec, Sequence[Any], Mapping[str, Any]]]:
    """(spec, args, kwargs) of each ``(name, kwargs)`` or ``(name, args, kwargs)`` call;
    tasks that share runs (unique, debounced, run-once) cannot be batched."""
    parsed = []
    for i, call in enumerate(calls):
        if not isinstance(call, tuple) or len(call) not in (2, 3):
            raise TypeError(f"calls[{i}] must be (name, kwargs) or (name, args, kwargs).")
        name, args, kwargs = (call[0], (), call[1]) if len(call) == 2 else call
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"calls[{i}] kwargs must be a mapping, got {kwargs!r}.")
        if isinstance(args, str | bytes | Mapping) or not isinstance(args, Sequence):
            raise TypeError(f"calls[{i}] args must be a list or tuple, got {args!r}.")
        spec = registry.get(_check_name(name, "task name"))
        if spec.unique is not None:
            raise ValueError(f"calls[{i}]: task {name!r} is unique, debounced or run-once; "
                             "start it with start() or start_or_get().")
        parsed.append((spec, args, kwargs))
    return parsed


def _flow_calls(calls: Sequence[Any], what: str) -> list[Any]:
    """A flow's calls, a bare task name standing for ``(name, {})``."""
    if not calls:
        raise ValueError(f"A {what} needs at least one call.")
    return [(call, {}) if isinstance(call, str) else call for call in calls]


def _announce(runs: list[Run]) -> list[Run]:
    """django.tasks runs started here send ``task_enqueued``, as ``Task.enqueue()`` does."""
    for run in runs:
        if run.kind == "django":
            from .backends import send_signal

            send_signal(run, "enqueued")
    return runs


def _flagged(run: Run, created: bool) -> tuple[Run, bool]:
    run.created = created
    if created:
        _announce([run])
    return run, created


def using(**options: Any) -> StartOptions:
    """Start options: queue, priority, run_after, delay, timeout, labels, owner, unique_key."""
    known = [f.name for f in fields(StartOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"Unknown start option {', '.join(map(repr, unknown))}; options are {', '.join(known)}."
        )
    return StartOptions(**options)


_DEFAULT = StartOptions()


def start(name: str, /, *args: Any, **kwargs: Any) -> Run:
    """Start the task ``name``; ``args``/``kwargs`` go to its handler. Returns the pending Run."""
    return _DEFAULT.start(name, *args, **kwargs)


def start_or_get(name: str, /, *args: Any, **kwargs: Any) -> tuple[Run, bool]:
    """Start the task ``name`` or get the run that stands for this start: ``(run, created)``."""
    return _DEFAULT.start_or_get(name, *args, **kwargs)


def start_many(calls: Iterable[Any]) -> list[Run]:
    return _DEFAULT.start_many(calls)


def chain(*calls: Any, name: str = "chain") -> Run:
    """Run tasks in sequence, each getting the previous result; see :meth:`StartOptions.chain`."""
    return _DEFAULT.chain(*calls, name=name)


def group(*calls: Any, then: Any = None, name: str = "group") -> Run:
    """Run tasks in parallel, ``then`` getting their results; see :meth:`StartOptions.group`."""
    return _DEFAULT.group(*calls, then=then, name=name)


def cancel(run: Run | int) -> Run:
    """Cancel a run: a waiting run ends at once, a claimed or running one is asked to stop
    (a claimed one whose handler has not begun ends canceled without running it).

    Idempotent: canceling a run that is already canceled or asked to stop (by this
    call's twin racing it, say) returns it; only a run that ended otherwise raises."""
    run_id = _run_id(run)
    current = _get(run_id)
    if current.kind in flows.KINDS:  # a chain or group: the parent and its open children
        return store.cancel_flow(run_id)
    if current.status in CLAIMABLE:
        try:
            return store.transition(run_id, Status.CANCELED, cancel_requested_at=timezone.now())
        except IllegalTransition:
            current = _get(run_id)  # claimed (or canceled) meanwhile
    if current.status in (Status.CLAIMED, Status.RUNNING):
        try:
            return store.transition(run_id, Status.CANCEL_REQUESTED,
                                    cancel_requested_at=timezone.now())
        except IllegalTransition:
            current = _get(run_id)  # another cancel (or the end) came first
    if current.status in (Status.CANCEL_REQUESTED, Status.CANCELED):
        return current
    raise IllegalTransition(run_id, current.status, Status.CANCELED)


def rerun(
    run: Run | int, *, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
) -> Run:
    """Start a new run with the same task and arguments, linked to the old one.

    ``args``/``kwargs`` replace the old run's arguments ("rerun with changed arguments");
    they are checked against the handler's signature like any start.
    """
    run_id = _run_id(run)
    old = _get(run_id)
    if old.status not in TERMINAL:
        raise ValueError(f"Run {run_id} is {old.status}; only finished runs can be rerun.")
    if old.kind == "django":
        if args is not None or kwargs is not None:
            raise ValueError(f"Run {run_id} is a django.tasks run: rerun it with its arguments.")
        from .backends import rerun_django

        return rerun_django(old)
    if old.kind in flows.KINDS:  # the same plan again
        if args is not None or kwargs is not None:
            raise ValueError(f"Run {run_id} is a {old.kind}: rerun it with its plan.")
        options = replace(_DEFAULT, queue=old.queue, labels=old.labels)
        return options._start_flow(old.kwargs, old.task_name, rerun_of=old)
    new = rerun_plan(old, args=args, kwargs=kwargs)
    spec = registry.get(old.task_name)
    if spec.unique is None:
        return store.create_runs([new])[0]
    run, created = _DEFAULT._share(spec, new)
    if not created:
        raise ValueError(f"Run {run_id} was not rerun: run {run.pk} ({run.status}) already "
                         f"stands for its key.")
    return run


def rerun_alone(old: Run) -> bool:
    """Must ``old`` be rerun by :func:`rerun` on its own rather than in a batch of
    :func:`rerun_plan` rows (django.tasks signals, a flow's plan, a unique task's key)?"""
    if old.kind != "live":
        return True
    return old.task_name in registry and registry.get(old.task_name).unique is not None


def rerun_plan(
    old: Run, *, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
) -> store.NewRun:
    """The new run that reruns the finished ``@task`` run ``old`` (validated, not saved):
    same task, queue, priority, timeout, labels and owner, linked by ``rerun_of``."""
    options = replace(_DEFAULT, queue=old.queue, priority=old.priority, timeout=old.timeout,
                      labels=old.labels)
    new = options.new_run(registry.get(old.task_name),
                          old.args if args is None else args,
                          old.kwargs if kwargs is None else kwargs)
    new.rerun_of_id = old.pk
    new.owner_id = old.owner_id
    return new


def wait(run: Run | int, timeout: float | None = None, poll: float = 0.05) -> Run:
    """Block until the run finishes; returns it. Raises ``TimeoutError`` after ``timeout`` s."""
    run_id = _run_id(run)
    return waiting.until_finished(run_id, lambda: _get(run_id), timeout, poll)


def _names(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    """A filter value: one name or several (None: no filter)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise TypeError(f"{what} must be a string or an iterable of strings, got {value!r}.")
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{what} must be non-empty strings, got {name!r}.")
    return names


def runs(
    *,
    status: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    queue: str | Iterable[str] | None = None,
    labels: Mapping[str, str] | None = None,
    owner: Any = None,
    since: dt.datetime | dt.timedelta | None = None,
) -> QuerySet[Run]:
    """Runs matching every filter given, newest first, as a lazy queryset.

    ``status``, ``task`` and ``queue`` take one name or several; ``labels`` a mapping
    every run must carry; ``owner`` a user or a user id; ``since`` an aware datetime or
    a timedelta (runs created at most that long ago). Bad filters raise
    ``TypeError``/``ValueError`` naming the problem.
    """
    statuses = _names(status, "status")
    unknown = [s for s in statuses or () if s not in Status.values]
    if unknown:
        raise ValueError(f"Unknown status {', '.join(map(repr, unknown))}; use one of: "
                         f"{', '.join(Status.values)}.")
    if labels is not None:
        StartOptions(labels=labels)  # the same rules as the labels runs are started with
    if owner is not None:
        owner = getattr(owner, "pk", owner)
        if isinstance(owner, bool) or not isinstance(owner, int):
            raise TypeError(f"owner must be a user or a user id, got {owner!r}.")
    if isinstance(since, dt.timedelta):
        since = timezone.now() - since
    elif since is not None:
        if not isinstance(since, dt.datetime):
            raise TypeError(f"since must be a datetime or a timedelta, got {since!r}.")
        if settings.USE_TZ and timezone.is_naive(since):
            raise ValueError("since must be an aware datetime.")
    return store.runs(status=statuses, task=_names(task, "task"), queue=_names(queue, "queue"),
                      labels=dict(labels) if labels else None, owner_id=owner, since=since)


def aruns(**filters: Any) -> QuerySet[Run]:
    """The async twin of :func:`runs`: the same filters and queryset, which queries
    nothing until it is used, so it is safe in async code: ``async for run in
    aruns(status="running")``, ``await aruns(task="x").acount()``."""
    return runs(**filters)


def pause(*, task: str | None = None, queue: str | None = None, reason: str = "") -> None:
    """Pause a task and/or a queue: no worker claims their runs (they stay pending,
    the reason shown) until :func:`resume`. Kept in the database: it holds across
    restarts and for every worker; running runs finish as they would."""
    pauses.pause(task=task, queue=queue, reason=reason)


def resume(*, task: str | None = None, queue: str | None = None) -> bool:
    """Resume a paused task and/or queue; workers claim its waiting runs at once.
    Returns whether anything was paused."""
    return pauses.resume(task=task, queue=queue) > 0


def paused() -> pauses.PauseSet:
    """The paused task and queue names, as the database has them now."""
    return pauses.read()


astart = sync_to_async(start)
astart_or_get = sync_to_async(start_or_get)
acancel = sync_to_async(cancel)
arerun = sync_to_async(rerun)
apause = sync_to_async(pause)
aresume = sync_to_async(resume)
apaused = sync_to_async(paused)


async def await_run(run: Run | int, timeout: float | None = None, poll: float = 0.05) -> Run:
    """Async twin of :func:`wait`."""
    run_id = _run_id(run)
    return await waiting.auntil_finished(run_id, lambda: _get(run_id), timeout, poll)


await_ = await_run
