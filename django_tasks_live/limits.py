"""Constraint groups: what a task's runs may do at once, how often, how far apart.

Pure declarations and decisions, no queries (:mod:`.admission` applies them in the
database). A limit applies to a run through a *key*: the limit's group (the task's
name unless ``group=`` names one shared by several tasks) and, with ``key=``, a value
computed from the run's arguments.

- ``Concurrency(n, key=..., group=...)``: at most ``n`` runs of a key hold a slot at
  once (``n=1``: mutual exclusion; no ``key``: a cap on the whole group, e.g. at most
  3 ``dns`` runs anywhere).
- ``Rate(n, per=seconds, key=...)``: at most ``n`` runs of a key start in any window
  of ``per`` seconds.
- ``Cooldown(seconds, key=...)``: one run of a key at a time, and the next one starts
  at least ``seconds`` after the previous one finished (so their completions are at
  least that far apart).

``key`` is a template of the handler's argument names (``"{domain}"``) or a callable of
the handler's arguments returning a string, or None to exempt the run from that limit.
A run starts only when every limit that applies to it allows it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from . import conf
from .uniqueness import check_template

MAX_KEY = 200  # LimitKey.key / RunLimit.key
MAX_CAP = 10_000
# Run.limited bits: the run holds slots until it ends / counts as a start when claimed.
SLOTS, RATE = 1, 2
KINDS = {"c": "concurrency", "r": "rate", "w": "cooldown"}
KeyFunc = Callable[..., "str | None"]


class LimitKeyError(ValueError):
    """A limit's key function raised, or returned something that is not a key: the
    start fails (no run is stored without its keys)."""


def _count(value: Any, what: str, upper: int = MAX_CAP) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ValueError(f"{what} must be an integer from 1 to {upper}, got {value!r}.")
    return value


def _seconds(value: Any, what: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value <= 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}.")
    return float(value)


def _group(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 100
                              or ":" in value or "\x00" in value):
        raise ValueError(f"group must be a non-empty string of at most 100 characters "
                         f"without ':', got {value!r}.")
    return value


def _key(value: Any) -> str | KeyFunc | None:
    if value is None or callable(value):
        return value
    check_template(value, None, "key")
    return value


@dataclass(frozen=True)
class Need:
    """One key a run needs room in, and the limit's figures the key is admitted by."""

    key: str  # "<kind>:<group>:<value>"
    cap: int  # runs holding the key at once
    rate: int | None = None  # Rate: starts per window
    window: float | None = None  # Rate: the window; Cooldown: the gap

    @property
    def kind(self) -> str:
        return KINDS[self.key[0]]

    @property
    def holds_to_the_end(self) -> bool:
        return self.key[0] != "r"


class _Limit:
    """What every limit has: a key (template, callable or None) and a group."""

    code: ClassVar[str]
    key: str | KeyFunc | None
    group: str | None

    def need(self, value: str) -> Need:
        raise NotImplementedError

    def _check_target(self) -> None:
        """Refuse a ``key`` or ``group`` that is neither a name nor absent (each limit's
        ``__post_init__``)."""
        _key(self.key)
        _group(self.group)

    def check_parameters(self, task_name: str, parameters: Sequence[str]) -> None:
        """Raise ``ValueError`` if a key template names an argument the handler lacks."""
        if isinstance(self.key, str):
            check_template(self.key, parameters, f"key of {self.describe()} on task {task_name!r}")

    def value(self, task_name: str, arguments: Mapping[str, Any], args: Sequence[Any],
              kwargs: Mapping[str, Any]) -> str | None:
        """This limit's key value for a start ("" for a limit without ``key``: one key
        for the whole group; None: the run is exempt from it)."""
        if self.key is None:
            return ""
        if isinstance(self.key, str):
            try:
                return self.key.format_map(dict(arguments))
            except KeyError as exc:
                raise LimitKeyError(f"The key {self.key!r} of {self.describe()} on task "
                                    f"{task_name!r} names the argument {exc.args[0]!r}, "
                                    "which this start lacks.") from None
        try:
            value = self.key(*args, **kwargs)
        except Exception as exc:
            raise LimitKeyError(
                f"The key of {self.describe()} on task {task_name!r} raised "
                f"{type(exc).__name__}: {exc}") from exc
        if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
            raise LimitKeyError(f"The key of {self.describe()} on task {task_name!r} must "
                                f"return a non-empty string or None, got {value!r}.")
        return value

    def stored_key(self, task_name: str, value: str) -> str:
        """``<kind>:<group>:<value>`` (``<kind>:<group>`` for a limit without ``key``),
        digested when too long for the column."""
        group = self.group or task_name
        if self.key is None:
            return f"{self.code}:{group}"
        key = f"{self.code}:{group}:{value}"
        if len(key) <= MAX_KEY:
            return key
        digest = hashlib.sha256(value.encode()).hexdigest()
        return f"{self.code}:{group[:100]}:sha256:{digest}"

    def describe(self) -> str:
        raise NotImplementedError

    def figures(self) -> tuple[int, int | None, float | None]:
        need = self.need("")
        return need.cap, need.rate, need.window


@dataclass(frozen=True)
class Concurrency(_Limit):
    """At most ``max`` runs of a key at once (from admission until they end)."""

    max: int
    key: str | KeyFunc | None = None
    group: str | None = None
    code: ClassVar[str] = "c"

    def __post_init__(self) -> None:
        _count(self.max, "Concurrency max")
        self._check_target()

    def need(self, value: str) -> Need:
        return Need(value, self.max)

    def describe(self) -> str:
        return f"Concurrency({self.max})"


@dataclass(frozen=True)
class Rate(_Limit):
    """At most ``max`` starts of a key in any window of ``per`` seconds."""

    max: int
    per: float
    key: str | KeyFunc | None = None
    group: str | None = None
    code: ClassVar[str] = "r"

    def __post_init__(self) -> None:
        _count(self.max, "Rate max", 1000)  # the latest starts are kept on the key's row
        object.__setattr__(self, "per", _seconds(self.per, "Rate per"))
        self._check_target()

    def need(self, value: str) -> Need:
        return Need(value, 1, self.max, self.per)

    def describe(self) -> str:
        return f"Rate({self.max}, per={self.per:g})"


@dataclass(frozen=True)
class Cooldown(_Limit):
    """One run of a key at a time, each starting ``seconds`` after the previous ended."""

    seconds: float
    key: str | KeyFunc | None = None
    group: str | None = None
    code: ClassVar[str] = "w"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", _seconds(self.seconds, "Cooldown seconds"))
        self._check_target()

    def need(self, value: str) -> Need:
        return Need(value, 1, None, self.seconds)

    def describe(self) -> str:
        return f"Cooldown({self.seconds:g})"


Limit = Concurrency | Rate | Cooldown
_BY_OPTION: dict[str, type[_Limit]] = {"concurrency": Concurrency, "rate": Rate,
                                       "cooldown": Cooldown}


def declared(limits: Iterable[Any] | None) -> tuple[Limit, ...]:
    """The ``limits=`` of ``@task`` checked: limit objects (or their settings dicts)."""
    if limits is None:
        return ()
    if isinstance(limits, _Limit | Mapping | str) or not isinstance(limits, Iterable):
        raise TypeError(f"limits must be a list of Concurrency, Rate or Cooldown, got {limits!r}.")
    return tuple(item if isinstance(item, _Limit) else from_setting(item)  # type: ignore[misc]
                 for item in limits)


def from_setting(entry: Any) -> Limit:
    """A limit from its settings form: ``{"concurrency": 3, "group": "dns"}``,
    ``{"rate": 10, "per": 60, "key": "{tenant}"}``, ``{"cooldown": 30, "key": "{a}"}``."""
    if isinstance(entry, _Limit):
        return entry  # type: ignore[return-value]
    if not isinstance(entry, Mapping):
        raise TypeError(f"A limit is Concurrency, Rate, Cooldown or a dict, got {entry!r}.")
    kinds = [name for name in _BY_OPTION if name in entry]
    if len(kinds) != 1:
        raise ValueError(f"A limit names exactly one of concurrency, rate, cooldown; got {dict(entry)!r}.")
    allowed = {kinds[0], "key", "group", *(("per",) if kinds[0] == "rate" else ())}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"Unknown limit option(s) {', '.join(unknown)} in {dict(entry)!r}.")
    options = {"key": entry.get("key"), "group": entry.get("group")}
    if kinds[0] == "rate":
        if "per" not in entry:
            raise ValueError(f"A rate limit needs per (seconds): {dict(entry)!r}.")
        return Rate(entry["rate"], entry["per"], **options)
    if kinds[0] == "cooldown":
        return Cooldown(entry["cooldown"], **options)
    return Concurrency(entry["concurrency"], **options)


def settings_limits() -> dict[str, tuple[Limit, ...]]:
    """``TASKS_LIVE["LIMITS"]`` (task name -> list of limit dicts) parsed; raises
    ``ValueError``/``TypeError`` naming the bad entry (the system check reports it)."""
    setting = conf.get("LIMITS")
    cached = _parsed.get(id(setting))
    if cached is not None and cached[0] is setting:
        return cached[1]
    if not isinstance(setting, Mapping):
        raise TypeError(f'TASKS_LIVE["LIMITS"] must map task names to lists of limits, got {setting!r}.')
    parsed = {}
    for name, entries in setting.items():
        try:
            parsed[name] = declared(entries)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f'TASKS_LIVE["LIMITS"][{name!r}]: {exc}') from None
    _parsed.clear()
    _parsed[id(setting)] = (setting, parsed)
    return parsed


_parsed: dict[int, tuple[Any, dict[str, tuple[Limit, ...]]]] = {}


def limits_of(spec: Any) -> tuple[Limit, ...]:
    """Every limit that applies to the task ``spec``: its own and the settings'."""
    from_settings = settings_limits().get(spec.name, ())
    return (*spec.limits, *from_settings) if from_settings else spec.limits


def needs(spec: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Need]:
    """The keys a start of ``spec`` with these arguments needs room in (sorted; empty:
    the run is not limited). Raises :class:`LimitKeyError` when a key function fails."""
    limits = limits_of(spec)
    if not limits:
        return []
    arguments = spec.arguments(args, kwargs)
    found: dict[str, Need] = {}
    for limit in limits:
        value = limit.value(spec.name, arguments, args, kwargs)
        if value is not None:
            need = limit.need(limit.stored_key(spec.name, value))
            found.setdefault(need.key, need)
    return [found[key] for key in sorted(found)]


def bits(found: Iterable[Need]) -> int:
    """``Run.limited`` for a run needing these keys."""
    value = 0
    for need in found:
        value |= SLOTS if need.holds_to_the_end else RATE
    return value


# ---------------------------------------------------------------- admission decisions


def gate(need: Need, starts: Sequence[dt.datetime], finished_at: dt.datetime | None
         ) -> dt.datetime | None:
    """The earliest time a run may start by this key's history (None: any time).

    Rate: the ``rate``-th latest start plus the window; cooldown: the last finish plus
    the gap."""
    if need.window is None:
        return None
    window = dt.timedelta(seconds=need.window)
    if need.rate is not None:
        return starts[-need.rate] + window if len(starts) >= need.rate else None
    return finished_at + window if finished_at is not None else None


def waiting_reason(key: str) -> str:
    """What a run waiting for room in ``key`` shows as its progress message."""
    kind, group, *keyed = key.split(":", 2)
    value = keyed[0] if keyed else ""
    if kind == "r":
        return f"rate limited (key {value})" if keyed else f"rate limited ({group})"
    if kind == "w":
        return f"cooling down (key {value})" if keyed else f"cooling down ({group})"
    return f"waiting for key {value}" if keyed else f"waiting for a {group} slot"


def gated_reason(key: str, until: dt.datetime) -> str:
    """The progress message of a run admitted to start later (a window, a cooldown)."""
    from django.utils import timezone

    clock = timezone.localtime(until).strftime("%H:%M:%S") if timezone.is_aware(until) \
        else until.strftime("%H:%M:%S")
    return f"{'rate limited' if key[0] == 'r' else 'cooling down'} until {clock}"


def conflicts(declarations: Iterable[tuple[str, Limit]]) -> list[str]:
    """Groups that tasks declare with different figures: a shared key has one cap."""
    seen: dict[tuple[str, str, bool], tuple[str, tuple[Any, ...]]] = {}
    problems = []
    for task_name, limit in declarations:
        group = (limit.code, limit.group or task_name, limit.key is None)
        first = seen.setdefault(group, (task_name, limit.figures()))
        if first[1] != limit.figures():
            problems.append(f"Task {task_name!r} declares {limit.describe()} on group "
                            f"{group[1]!r}, task {first[0]!r} declares it with other figures.")
    return problems
