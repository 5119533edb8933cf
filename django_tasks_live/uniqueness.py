"""Unique, debounced and run-once tasks: the rule a task declares and the key of a start.

Pure logic, no queries: :func:`store.start_unique` applies a rule in the database, where
partial unique indexes make it race-free across processes and machines.

- ``unique=True`` (key from the arguments) or ``unique_key=`` (a string, a template of
  argument names such as ``"sync:{account}"``, or a callable of the handler's arguments
  returning a string or None to exempt the start): a start while a run with the same key
  is pending returns that run; ``unique_while="active"`` also while it runs.
- ``debounce=seconds``: the first start creates a run due ``seconds`` later; starts in
  that window collapse into it, the last one's arguments winning (key: ``unique_key``,
  else one per task).
- ``run_once=True``: once a run of the key completed, starts return it; one attempt at
  a time until then.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SCOPES = ("pending", "active")
MAX_KEY = 200  # Run.unique_key / Run.pending_key


@dataclass(frozen=True)
class UniqueRule:
    """How starts of one task share runs."""

    key: str | Callable[..., str | None] | None = None  # None: from the arguments
    scope: str = "pending"  # "pending": share a waiting run; "active": a running one too
    debounce: float | None = None  # seconds of the collapsing window
    once: bool = False  # a completed run of the key ends all later starts

    def key_for(self, task_name: str, arguments: Mapping[str, Any], args: Sequence[Any],
                kwargs: Mapping[str, Any]) -> str | None:
        """The stored key of a start (None: the start is exempt and creates a run).

        ``arguments`` are the handler's arguments by name (bound to its signature)."""
        if callable(self.key):
            value = self.key(*args, **kwargs)
            if value is None:
                return None
            if not isinstance(value, str) or not value or "\x00" in value:
                raise TypeError(
                    f"unique_key of task {task_name!r} must return a non-empty string or None, "
                    f"got {value!r}."
                )
        elif isinstance(self.key, str):
            try:
                # Names were checked at declaration: no attribute or item access.
                value = self.key.format_map(dict(arguments))
            except KeyError as exc:
                raise TypeError(f"unique_key {self.key!r} of task {task_name!r} names the "
                                f"argument {exc.args[0]!r}, which this start lacks.") from None
        elif self.debounce is not None:
            value = ""  # one debounced run per task: the arguments differ by design
        else:
            value = _digest(args, kwargs)
        return stored_key(task_name, value)


def stored_key(task_name: str, value: str) -> str:
    """``task:value``, digested when too long for the column (keys are compared, never
    read back)."""
    key = f"{task_name}:{value}"
    if len(key) <= MAX_KEY:
        return key
    return f"{task_name[:100]}:sha256:{hashlib.sha256(value.encode()).hexdigest()}"


def _digest(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    text = json.dumps([list(args), dict(kwargs)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rule(
    *,
    unique: bool = False,
    unique_key: str | Callable[..., str | None] | None = None,
    unique_while: str | None = None,
    debounce: float | None = None,
    run_once: bool = False,
    parameters: Sequence[str] = (),
) -> UniqueRule | None:
    """The rule ``@task`` options declare (None: starts never share runs); raises
    ``TypeError``/``ValueError`` naming a bad option. ``parameters``: the handler's
    argument names, which a ``unique_key`` template may use."""
    for name, value in (("unique", unique), ("run_once", run_once)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    if unique_key is not None and not callable(unique_key):
        check_template(unique_key, parameters)
    if unique_while is not None and unique_while not in SCOPES:
        raise ValueError(f"unique_while must be one of {', '.join(SCOPES)}, got {unique_while!r}.")
    if debounce is not None and (
        isinstance(debounce, bool) or not isinstance(debounce, int | float)
        or not math.isfinite(debounce) or debounce <= 0
    ):
        raise ValueError(f"debounce must be a positive number of seconds, got {debounce!r}.")
    if debounce is not None and (run_once or unique_while == "active"):
        raise ValueError("debounce collapses starts into a waiting run: it cannot be combined "
                         "with run_once or unique_while='active'.")
    if run_once and unique_while == "pending":
        raise ValueError("run_once shares the run while it is pending or running: "
                         "leave unique_while unset (or 'active').")
    if not (unique or unique_key is not None or debounce is not None or run_once):
        if unique_while is not None:
            raise ValueError("unique_while needs unique=True, unique_key= or run_once=True.")
        return None
    scope = "active" if run_once else unique_while or "pending"
    return UniqueRule(key=unique_key, scope=scope, debounce=debounce, once=run_once)


def check_template(template: Any, parameters: Sequence[str] | None,
                   option: str = "unique_key") -> None:
    """Raise ``ValueError`` unless ``template`` is a key template (``"sync:{account}"``)
    naming only ``parameters`` (None: any names; checked later, per task)."""
    if not isinstance(template, str) or not template or len(template) > 150 or "\x00" in template:
        raise ValueError(
            f"{option} must be a callable or a non-empty string of at most 150 characters, "
            f"got {template!r}."
        )
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as exc:
        raise ValueError(f"{option} {template!r} is not a valid template: {exc}.") from None
    for field in fields:
        if parameters is None:
            if not field.isidentifier():
                raise ValueError(f"{option} {template!r} may only name arguments as {{name}}, "
                                 f"got {{{field}}}.")
        elif field not in parameters:
            raise ValueError(
                f"{option} {template!r} may only name the handler's arguments "
                f"({', '.join(parameters) or 'none'}) as {{name}}, got {{{field}}}."
            )
