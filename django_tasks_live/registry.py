"""The ``@task`` decorator and the registry of handlers.

Only registered handlers can ever be started: a run names its handler, and the worker
looks the name up here. Nothing stored in the database is imported or executed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
        }

    def check_arguments(self, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` if the handler could not be called with these arguments."""
        try:
            self.signature.bind(None, *args, **kwargs)  # None stands for ctx
        except TypeError as exc:
            raise TypeError(f"Bad arguments for task {self.name!r}: {exc}") from None


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

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._specs), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = f" Registered tasks: {', '.join(sorted(self._specs)) or 'none'}."
        return f"Unknown task {name!r}.{hint}{known if not close else ''}"


registry = Registry()


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


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
) -> Any:
    """Register ``func(ctx, **kwargs)`` as a task handler.

    ``@task`` uses the function's dotted path as its name; ``@task("import-data", ...)``
    names it. ``retries`` is the number of retries after the first attempt.
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
        from .models import validate_cron, validate_timezone

        validate_cron(cron)
        validate_timezone(cron_timezone)
    normalized_steps = _normalize_steps(steps)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"Task handler {_qualname(func)} must take ctx as first argument.")
        spec = TaskSpec(
            name=name or _qualname(func),
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
        )
        registry.add(spec)
        func.task_name = spec.name  # type: ignore[attr-defined]
        return func

    return decorate
