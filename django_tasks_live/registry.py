"""The ``@task`` decorator and the registry of handlers.

Only registered handlers can ever be started: a run names its handler, and the worker
looks the name up here. Nothing stored in the database is imported or executed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import limits as limits_module
from .arguments import validate
from .cron import validate_cron, validate_timezone
from .engines import check_name
from .uniqueness import UniqueRule, rule

BACKOFFS = ("fixed", "linear", "exponential")


class UnknownTask(LookupError):
    """No handler is registered under that name."""


@dataclass(frozen=True)
class TaskSpec:
    """A registered handler and its options."""

    name: str
    func: Callable[..., Any]
    timeout: float | None = None
    max_attempts: int = 1
    backoff: str = "exponential"
    backoff_base: float | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    steps: tuple[tuple[str, float], ...] = ()
    queue: str = "default"
    priority: int = 0
    cron: str | None = None
    cron_timezone: str = "UTC"
    description: str = ""
    # "live": an @task handler; "django": a django.tasks Task on a LiveTasksBackend
    # (``backend`` is its TASKS alias), called through a wrapper that drops ctx.
    kind: str = "live"
    backend: str = ""
    # The engine that executes its runs (None: per queue, then TASKS_LIVE["EXECUTOR"]).
    executor: str | None = None
    unique: UniqueRule | None = None  # unique, debounced or run-once starts
    # Called as should_execute(ctx, *args, **kwargs) when a run's turn comes, before the
    # handler: True runs it; False or a reason (a string) ends it skipped.
    should_execute: Callable[..., bool | str] | None = None
    # Constraint groups (concurrency, rate, cooldown): see django_tasks_live.limits.
    limits: tuple[limits_module.Limit, ...] = ()
    signature: inspect.Signature = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", inspect.signature(self.func))

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def options(self) -> dict[str, Any]:
        return {
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "queue": self.queue,
            "priority": self.priority,
            "cron": self.cron,
            "steps": [list(step) for step in self.steps],
            **({"django_task": True, "backend": self.backend} if self.kind == "django" else {}),
            "unique": None if self.unique is None else {
                "scope": self.unique.scope, "debounce": self.unique.debounce,
                "run_once": self.unique.once},
            **({"should_execute": _qualname(self.should_execute)} if self.should_execute else {}),
            **({"limits": [limit.describe() for limit in self.limits]} if self.limits else {}),
        }

    def arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The handler's arguments of a start by name, defaults applied (ctx left out)."""
        bound = self.signature.bind(None, *args, **kwargs)  # None stands for ctx
        bound.apply_defaults()
        return dict(list(bound.arguments.items())[1:])

    def unique_key_for(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The key a start of this task shares runs by (None: it shares nothing)."""
        if self.unique is None:
            return None
        return self.unique.key_for(self.name, self.arguments(args, kwargs), args, kwargs)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` (:class:`arguments.ArgumentError`) if the handler does not
        take these arguments: its signature and annotations (:func:`arguments.validate`)."""
        validate(self, args, kwargs)


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, spec: TaskSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and _qualname(existing.func) != _qualname(spec.func):
            raise ValueError(
                f"Task name {spec.name!r} is already registered by {_qualname(existing.func)}."
            )
        self._specs[spec.name] = spec

    def remove(self, name: str) -> None:
        self._specs.pop(name, None)

    def get(self, name: str) -> TaskSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTask(self.unknown_message(name)) from None

    def find(self, name: str) -> TaskSpec | None:
        """The spec registered under ``name``, or None."""
        return self._specs.get(name)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._specs), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = f" Registered tasks: {', '.join(sorted(self._specs)) or 'none'}."
        return f"Unknown task {name!r}.{hint}{known if not close else ''}"


registry = Registry()


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def _key_parameters(params: Sequence[inspect.Parameter]) -> list[str] | None:
    """Argument names a key template may use (None: any, the handler takes **kwargs)."""
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind != inspect.Parameter.VAR_POSITIONAL]


def _normalize_steps(steps: Any) -> tuple[tuple[str, float], ...]:
    if not steps:
        return ()
    if isinstance(steps, Mapping):
        items = list(steps.items())
    else:
        items = [(s, 1.0) if isinstance(s, str) else tuple(s) for s in steps]
    out = []
    for name, weight in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Step names must be non-empty strings, got {name!r}.")
        if not isinstance(weight, int | float) or weight <= 0:
            raise ValueError(f"Step {name!r} needs a positive weight, got {weight!r}.")
        out.append((name, float(weight)))
    if len({name for name, _ in out}) != len(out):
        raise ValueError("Step names must be unique.")
    return tuple(out)


def task(
    name: str | Callable[..., Any] | None = None,
    *,
    timeout: float | None = None,
    retries: int = 0,
    backoff: str = "exponential",
    backoff_base: float | None = None,
    retry_on: Iterable[type[BaseException]] | type[BaseException] = (),
    steps: Mapping[str, float] | Iterable[str | tuple[str, float]] | None = None,
    queue: str = "default",
    priority: int = 0,
    cron: str | None = None,
    cron_timezone: str = "UTC",
    executor: str | None = None,
    unique: bool = False,
    unique_key: str | Callable[..., str | None] | None = None,
    unique_while: str | None = None,
    debounce: float | None = None,
    run_once: bool = False,
    should_execute: Callable[..., bool | str] | None = None,
    limits: Iterable[limits_module.Limit | Mapping[str, Any]] | None = None,
) -> Any:
    """Register ``func(ctx, **kwargs)`` as a task handler.

    ``@task`` uses the function's dotted path as its name; ``@task("import-data", ...)``
    names it. ``retries`` is the number of retries after the first attempt.
    ``executor`` ("builtin", "django_q") picks the engine that runs it.
    ``unique``/``unique_key``/``unique_while``, ``debounce`` and ``run_once`` make starts
    share runs (see :mod:`django_tasks_live.uniqueness`). ``should_execute(ctx, *args,
    **kwargs)`` is asked when a run's turn comes: False (or a reason string) ends the run
    ``skipped`` without calling the handler. ``limits`` (:mod:`django_tasks_live.limits`:
    ``Concurrency``, ``Rate``, ``Cooldown``) hold a run pending until every one allows it.
    """
    if callable(name):  # bare @task
        return task()(name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"Task name must be a non-empty string, got {name!r}.")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}.")
    if backoff_base is not None and (
        not isinstance(backoff_base, int | float) or isinstance(backoff_base, bool)
        or not 0 <= backoff_base < float("inf")
    ):
        raise ValueError(f"backoff_base must be a non-negative number of seconds, got {backoff_base!r}.")
    if not isinstance(queue, str) or not queue or len(queue) > 100:
        raise ValueError(f"queue must be a non-empty string of at most 100 characters, got {queue!r}.")
    if not isinstance(priority, int) or isinstance(priority, bool) or not -100 <= priority <= 100:
        raise ValueError(f"priority must be an integer from -100 to 100, got {priority!r}.")
    if backoff not in BACKOFFS:
        raise ValueError(f"backoff must be one of {', '.join(BACKOFFS)}, got {backoff!r}.")
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    retry_on = tuple(retry_on)
    for exc_type in retry_on:
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"retry_on takes exception classes, got {exc_type!r}.")
    if cron is not None:
        validate_cron(cron)
        validate_timezone(cron_timezone)
    normalized_steps = _normalize_steps(steps)
    if should_execute is not None and (
        not callable(should_execute) or inspect.iscoroutinefunction(should_execute)
    ):
        raise TypeError("should_execute must be a plain (not async) callable taking "
                        f"(ctx, *args, **kwargs), got {should_execute!r}.")
    declared_limits = limits_module.declared(limits)
    if executor is not None:
        check_name(executor, "executor")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"Task handler {_qualname(func)} must take ctx as first argument.")
        unique_rule = rule(unique=unique, unique_key=unique_key, unique_while=unique_while,
                           debounce=debounce, run_once=run_once,
                           parameters=[p.name for p in params[1:]])
        task_name = name or _qualname(func)
        for limit in declared_limits:
            limit.check_parameters(task_name, _key_parameters(params[1:]))
        spec = TaskSpec(
            name=task_name,
            func=func,
            timeout=timeout,
            max_attempts=retries + 1,
            backoff=backoff,
            backoff_base=backoff_base,
            retry_on=retry_on,
            steps=normalized_steps,
            queue=queue,
            priority=priority,
            cron=cron,
            cron_timezone=cron_timezone,
            description=(inspect.getdoc(func) or "").split("\n\n")[0],
            executor=executor,
            unique=unique_rule,
            should_execute=should_execute,
            limits=declared_limits,
        )
        registry.add(spec)
        func.task_name = spec.name  # type: ignore[attr-defined]
        return func

    return decorate
