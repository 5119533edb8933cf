"""Handler arguments checked against the handler's annotations: ONE validator for
every entry point (the Python API, ``django.tasks`` ``enqueue``, the start endpoint's
JSON and form bodies, the admin, schedules).

``validate(spec, args, kwargs)`` is the public function (``spec``: a registered task,
``registry.get(name)``; this module imports nothing of the registry): it raises
:class:`ArgumentError` (a ``TypeError``) whose text names the parameter, what it
expected and what it got, and returns the arguments as the JSON that is stored
(enum members become their values, dataclass and pydantic instances become
objects). ``for_handler`` turns that JSON back into what the annotations ask for
when the handler is called.

Supported annotations: ``int``, ``float`` (an int is accepted), ``bool`` (``True``
is not an int here), ``str``, ``None``, ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``dict[str, X]``, bare ``list`` / ``dict``, ``Optional[X]`` /
``X | None`` and other unions, ``Literal[...]``, enums (by value), ``TypedDict``
and dataclasses (JSON objects with their fields, no others), pydantic models
when pydantic is installed, ``Annotated[X, ...]`` and ``NewType`` (checked as X).
A parameter without an annotation, or annotated ``Any``, ``object`` or a type this
module does not know, accepts any JSON value.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .jsonvalues import ensure_json

__all__ = ["ArgumentError", "for_handler", "from_form", "validate"]

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_MISSING = object()


class Handler(Protocol):
    """What the validator reads of a task (a ``registry.TaskSpec``)."""

    name: str
    func: Callable[..., Any]


class ArgumentError(TypeError):
    """Arguments a task's handler does not take. ``parameter`` (the path to the bad
    value, e.g. ``rows[2]``), ``expected`` and ``got`` are None for a call that does
    not fit the signature at all (a missing or unexpected argument)."""

    def __init__(self, task: str, reason: str, *, parameter: str | None = None,
                 expected: str | None = None, got: str | None = None) -> None:
        self.task, self.reason = task, reason
        self.parameter, self.expected, self.got = parameter, expected, got
        super().__init__(f"Bad arguments for task {task!r}: {reason}")


class _Mismatch(Exception):
    """Raised inside a check; :func:`validate` adds the task name."""

    def __init__(self, path: str, expected: str, got: Any) -> None:
        super().__init__(path, expected, got)
        self.path, self.expected, self.got = path, expected, _show(got)


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# ---------------------------------------------------------------- the kinds of annotation


class _Kind:
    """How one annotation checks a value (``encode``: Python or JSON in, JSON out,
    raising _Mismatch) and rebuilds it for the handler (``decode``: JSON in).
    ``rebuilds``: decode makes something else than the JSON (the runner skips the
    step for handlers whose parameters are all plain JSON: the hot path)."""

    name = "any JSON value"
    rebuilds = False

    def encode(self, value: Any, path: str) -> Any:
        return value

    def decode(self, value: Any) -> Any:
        return value


class _Exact(_Kind):
    """``int``, ``bool``, ``str``, ``None``: that JSON type exactly (bool is no int)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.name = "None" if cls is type(None) else cls.__name__

    def encode(self, value: Any, path: str) -> Any:
        if type(value) is self.cls:
            return value
        if self.cls is not bool and isinstance(value, self.cls) and not isinstance(value, bool):
            # A subclass: a StrEnum / IntEnum member is stored as its value.
            return value.value if isinstance(value, enum.Enum) else self.cls(value)
        raise _Mismatch(path, self.name, value)


class _Float(_Kind):
    name = "float"

    def encode(self, value: Any, path: str) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool | enum.Enum):
            return value
        raise _Mismatch(path, self.name, value)


class _List(_Kind):
    """``list[X]`` and ``tuple[X, ...]``: a JSON array of X."""

    def __init__(self, item: _Kind, tuple_out: bool = False) -> None:
        self.item, self.tuple_out = item, tuple_out
        self.rebuilds = tuple_out or item.rebuilds
        self.name = f"tuple[{item.name}, ...]" if tuple_out else f"list[{item.name}]"

    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            raise _Mismatch(path, self.name, value)
        return [self.item.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def decode(self, value: Any) -> Any:
        items = [self.item.decode(v) for v in value]
        return tuple(items) if self.tuple_out else items


class _Tuple(_Kind):
    """``tuple[X, Y]``: a JSON array of exactly those items."""

    def __init__(self, items: list[_Kind]) -> None:
        self.items = items
        self.rebuilds = True
        self.name = f"tuple[{', '.join(k.name for k in items)}]"

    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(self.items):
            raise _Mismatch(path, f"{self.name} (an array of {len(self.items)} items)", value)
        return [k.encode(v, f"{path}[{i}]") for i, (k, v) in enumerate(zip(self.items, value, strict=True))]

    def decode(self, value: Any) -> Any:
        return tuple(k.decode(v) for k, v in zip(self.items, value, strict=True))


class _Dict(_Kind):
    """``dict[str, X]``: a JSON object whose values are X."""

    def __init__(self, value: _Kind) -> None:
        self.value = value
        self.rebuilds = value.rebuilds
        self.name = f"dict[str, {value.name}]"

    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch(path, self.name, value)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Mismatch(f"{path} key {key!r}", "str", key)
            out[key] = self.value.encode(item, f"{path}[{key!r}]")
        return out

    def decode(self, value: Any) -> Any:
        return {key: self.value.decode(item) for key, item in value.items()}


class _Union(_Kind):
    """``X | Y`` (``Optional[X]`` is ``X | None``): the first arm that accepts it."""

    def __init__(self, arms: list[_Kind]) -> None:
        self.arms = arms
        self.rebuilds = any(arm.rebuilds for arm in arms)
        self.name = " or ".join(arm.name for arm in arms)

    def _arm(self, value: Any, path: str) -> tuple[_Kind, Any]:
        inner = []
        for arm in self.arms:
            try:
                return arm, arm.encode(value, path)
            except _Mismatch as exc:
                if exc.path != path:
                    inner.append(exc)
        if len(inner) == 1:  # one arm took the value's shape and failed inside: that is the news
            raise inner[0]
        raise _Mismatch(path, self.name, value)

    def encode(self, value: Any, path: str) -> Any:
        return self._arm(value, path)[1]

    def decode(self, value: Any) -> Any:
        return self._arm(value, "")[0].decode(value)


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of the same JSON kind: ``True`` is not ``1``, ``1.0`` is not ``1``."""
    return type(a) is type(b) and a == b


class _Choice(_Kind):
    """``Literal[...]`` and enums: one of the allowed JSON values."""

    def __init__(self, values: list[Any], members: list[Any], name: str) -> None:
        self.values, self.members = values, members
        self.rebuilds = any(v is not m for v, m in zip(values, members, strict=True))
        self.name = name

    def encode(self, value: Any, path: str) -> Any:
        for allowed, member in zip(self.values, self.members, strict=True):
            if value is member or _same_value(value, allowed):
                return allowed
        raise _Mismatch(path, self.name, value)

    def decode(self, value: Any) -> Any:
        for allowed, member in zip(self.values, self.members, strict=True):
            if _same_value(value, allowed):
                return member
        return value


def _choices(values: Sequence[Any]) -> str:
    return ", ".join(repr(v) for v in values)


class _Object(_Kind):
    """``TypedDict`` and dataclasses: a JSON object with their fields and no others."""

    def __init__(self, cls: type, fields: dict[str, _Kind], required: set[str], build: bool) -> None:
        self.cls, self.fields, self.required, self.build = cls, fields, required, build
        self.rebuilds = build or any(kind.rebuilds for kind in fields.values())
        self.name = f"{cls.__name__} object"

    def encode(self, value: Any, path: str) -> Any:
        if self.build and isinstance(value, self.cls):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        if not isinstance(value, Mapping):
            raise _Mismatch(path, self.name, value)
        for name in self.fields:
            if name in self.required and name not in value:
                raise _Mismatch(f"{path}[{name!r}]", f"{self.fields[name].name} (a required field of "
                                f"{self.cls.__name__})", _MISSING)
        out = {}
        for key, item in value.items():
            kind = self.fields.get(key) if isinstance(key, str) else None
            if kind is None:
                raise _Mismatch(f"{path}[{key!r}]", f"no such field ({self.cls.__name__} has: "
                                f"{', '.join(self.fields) or 'none'})", item)
            out[key] = kind.encode(item, f"{path}[{key!r}]")
        return out

    def decode(self, value: Any) -> Any:
        values = {key: self.fields[key].decode(item) for key, item in value.items()}
        return self.cls(**values) if self.build else values


class _Pydantic(_Kind):
    """A pydantic model: the model's own validation; stored as its JSON dump."""

    rebuilds = True

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        self.name = f"{cls.__name__} object"

    def encode(self, value: Any, path: str) -> Any:
        import pydantic

        if isinstance(value, self.cls):
            return value.model_dump(mode="json")
        if not isinstance(value, Mapping):
            raise _Mismatch(path, self.name, value)
        try:
            return self.cls.model_validate(value).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = path + "".join(f"[{p!r}]" for p in first["loc"])
            raise _Mismatch(where, f"{self.cls.__name__} field: {first['msg']}",
                            first.get("input", _MISSING)) from None

    def decode(self, value: Any) -> Any:
        return self.cls.model_validate(value)


_ANY = _Kind()


def _is_pydantic_model(annotation: Any) -> bool:
    pydantic = sys.modules.get("pydantic")  # not imported: no annotation can be a model
    return (pydantic is not None and isinstance(annotation, type)
            and issubclass(annotation, pydantic.BaseModel))


def _is_typeddict(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.is_typeddict(annotation)


def kind_of(annotation: Any) -> _Kind:
    """The check for one annotation (cached where the annotation is hashable)."""
    try:
        return _cached_kind(annotation)
    except TypeError:  # e.g. Annotated[X, {...}]: unhashable metadata
        return _build_kind(annotation)


@functools.cache
def _cached_kind(annotation: Any) -> _Kind:
    return _build_kind(annotation)


def _type_hints(obj: Any) -> dict[str, Any]:
    """``obj``'s resolved annotations (postponed ones evaluated); those that cannot be
    resolved count as absent (any JSON)."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # some name does not resolve: resolve the others one by one
        hints = {}
        namespace = getattr(obj, "__globals__", None) or vars(sys.modules.get(obj.__module__, typing))
        for name, value in getattr(obj, "__annotations__", {}).items():
            if isinstance(value, str):
                try:
                    # The handler's own source text, evaluated as get_type_hints() does.
                    value = eval(value, dict(namespace))
                except Exception:
                    continue
            hints[name] = value
        return hints


def _build_kind(annotation: Any) -> _Kind:
    if annotation is inspect.Parameter.empty or annotation in (Any, object):
        return _ANY
    if annotation is None or annotation is type(None):
        return _Exact(type(None))
    if annotation in (int, bool, str):
        return _Exact(annotation)
    if annotation is float:
        return _Float()
    if annotation is list:
        return _List(_ANY)
    if annotation is tuple:
        return _List(_ANY, tuple_out=True)
    if annotation is dict:
        return _Dict(_ANY)
    if isinstance(annotation, typing.NewType):
        return kind_of(annotation.__supertype__)
    origin, params = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return kind_of(params[0])
    if origin in (typing.Union, types.UnionType):
        return _Union([kind_of(arm) for arm in params])
    if origin is typing.Literal:
        values = [v.value if isinstance(v, enum.Enum) else v for v in params]
        return _Choice(values, list(params), f"one of {_choices(values)}")
    if origin is list or origin is Sequence:
        return _List(kind_of(params[0]) if params else _ANY)
    if origin is tuple:
        if len(params) == 2 and params[1] is Ellipsis:
            return _List(kind_of(params[0]), tuple_out=True)
        return _Tuple([kind_of(p) for p in params]) if params else _List(_ANY, tuple_out=True)
    if origin is dict or origin is Mapping:
        # dict[int, X] cannot come from JSON (its keys are text): check the values only.
        return _Dict(kind_of(params[1]) if len(params) == 2 else _ANY)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members = list(annotation)
        values = [m.value for m in members]
        return _Choice(values, members, f"{annotation.__name__} (one of {_choices(values)})")
    if _is_typeddict(annotation):
        hints = _type_hints(annotation)
        return _Object(annotation, {k: kind_of(typing.get_args(v)[0] if typing.get_origin(v) in
                                                (typing.Required, typing.NotRequired) else v)
                                    for k, v in hints.items()},
                       set(annotation.__required_keys__), build=False)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        hints = _type_hints(annotation)
        fields = [f for f in dataclasses.fields(annotation) if f.init]
        required = {f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        return _Object(annotation, {f.name: kind_of(hints.get(f.name, Any)) for f in fields},
                       required, build=True)
    if _is_pydantic_model(annotation):
        return _Pydantic(annotation)
    return _ANY  # a type this module does not know: any JSON, as unannotated


# ---------------------------------------------------------------- a handler's parameters


@dataclasses.dataclass(frozen=True)
class _Plan:
    signature: inspect.Signature
    positional: list[tuple[str, _Kind]]  # after ctx, in order
    var_positional: _Kind | None
    keyword: dict[str, _Kind]
    var_keyword: _Kind | None
    rebuilds: bool  # some parameter is decoded into something else than its JSON

    def positional_kind(self, index: int) -> tuple[str, _Kind]:
        if index < len(self.positional):
            return self.positional[index]
        assert self.var_positional is not None  # bind() refused extra positionals already
        return f"args[{index}]", self.var_positional

    def keyword_kind(self, name: str) -> _Kind:
        kind = self.keyword.get(name, self.var_keyword)
        assert kind is not None  # bind() refused unknown keywords already
        return kind


@functools.lru_cache(maxsize=2048)
def _plan(func: Callable[..., Any]) -> _Plan:
    signature = inspect.signature(func)
    hints = _type_hints(inspect.unwrap(func))
    params = list(signature.parameters.values())[1:]  # the first is ctx
    positional, keyword = [], {}
    var_positional = var_keyword = None
    for param in params:
        kind = kind_of(hints.get(param.name, param.annotation)
                       if not isinstance(param.annotation, str) or param.name in hints
                       else inspect.Parameter.empty)
        if param.kind is param.VAR_POSITIONAL:
            var_positional = kind
        elif param.kind is param.VAR_KEYWORD:
            var_keyword = kind
        else:
            if param.kind is not param.KEYWORD_ONLY:
                positional.append((param.name, kind))
            if param.kind is not param.POSITIONAL_ONLY:
                keyword[param.name] = kind
    kinds = [kind for _, kind in positional] + list(keyword.values()) + [var_positional, var_keyword]
    rebuilds = any(kind is not None and kind.rebuilds for kind in kinds)
    return _Plan(signature, positional, var_positional, keyword, var_keyword, rebuilds)


def validate(
    spec: Handler, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Check a call of the task ``spec`` (``registry.get(name)``) before it is queued;
    returns ``(args, kwargs)`` as the JSON to store.

    Raises :class:`ArgumentError`: ``Bad arguments for task 'add': parameter 'a'
    expected int, got 'x' (str).`` (or the signature's own complaint, e.g. a missing
    argument), ``TypeError`` from :func:`jsonvalues.ensure_json` for a value JSON
    cannot hold.
    """
    kwargs = {} if kwargs is None else kwargs
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ArgumentError(spec.name, f"args must be a list, got {_show(args)}.")
    if not isinstance(kwargs, Mapping):
        raise ArgumentError(spec.name, f"kwargs must be a mapping, got {_show(kwargs)}.")
    plan = _plan(spec.func)
    try:
        plan.signature.bind(None, *args, **kwargs)  # None stands for ctx
    except TypeError as exc:
        raise ArgumentError(spec.name, str(exc)) from None
    try:
        out_args = []
        for i, value in enumerate(args):
            name, kind = plan.positional_kind(i)
            out_args.append(kind.encode(value, name))
        out_kwargs = {name: plan.keyword_kind(name).encode(value, name) for name, value in kwargs.items()}
    except _Mismatch as exc:
        raise ArgumentError(
            spec.name, f"parameter {exc.path!r} expected {exc.expected}, got {exc.got}.",
            parameter=exc.path, expected=exc.expected, got=exc.got,
        ) from None
    ensure_json(out_args, "args")
    ensure_json(out_kwargs, "kwargs")
    return out_args, out_kwargs


def for_handler(
    spec: Handler, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Stored JSON arguments as the handler's annotations ask for them: enum members,
    dataclass and pydantic instances, tuples (everything else is passed as stored).
    Raises :class:`ArgumentError` when they no longer fit (the handler changed)."""
    plan = _plan(spec.func)
    if not plan.rebuilds:
        return list(args), dict(kwargs)
    validate(spec, args, kwargs)  # the handler may have changed since the start: say so
    out_args = [plan.positional_kind(i)[1].decode(v) for i, v in enumerate(args)]
    return out_args, {name: plan.keyword_kind(name).decode(v) for name, v in kwargs.items()}


# ---------------------------------------------------------------- form fields


def from_form(spec: Handler, name: str, values: Sequence[str]) -> Any:
    """Form field ``name``'s text values as the value its parameter's annotation asks
    for (``"5"`` for an int is 5, ``"on"`` for a bool is True, JSON text for a list,
    dict, dataclass or model; several values make a list). Text that does not convert
    is returned as it is, so :func:`validate` then reports it in the usual words.
    An unannotated parameter takes the type of its default (int, float or bool)."""
    plan = _plan(spec.func)
    param = plan.signature.parameters.get(name)
    kind = plan.keyword.get(name, plan.var_keyword or _ANY)
    if kind is _ANY and param is not None and type(param.default) in (int, float, bool):
        kind = kind_of(type(param.default))
    if isinstance(kind, _Union):  # Optional[list[int]]: the list decides
        arms = [arm for arm in kind.arms if not (isinstance(arm, _Exact) and arm.cls is type(None))]
        kind = arms[0] if len(arms) == 1 and isinstance(arms[0], _List) else kind
    if isinstance(kind, _List) and (len(values) != 1 or not values[0].lstrip().startswith("[")):
        return [_from_text(kind.item, value) for value in values]  # one item per field value
    if len(values) > 1:
        return [_from_text(kind, value) for value in values]
    return _from_text(kind, values[0])


def _from_text(kind: _Kind, text: str) -> Any:
    if isinstance(kind, _Union):
        for arm in kind.arms:
            candidate = _from_text(arm, text)
            try:
                arm.encode(candidate, "")
                return candidate
            except _Mismatch:
                continue
        return text
    if isinstance(kind, _Exact):
        if kind.cls is bool:
            word = text.strip().lower()
            return word in TRUE_WORDS if word in TRUE_WORDS | FALSE_WORDS else text
        if kind.cls is int:
            try:
                return int(text)
            except ValueError:
                return text
        if kind.cls is type(None):
            return None if text == "" else text
        return text
    if isinstance(kind, _Float):
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(kind, _Choice):
        for allowed in kind.values:
            if str(allowed) == text or (isinstance(allowed, bool) and str(allowed).lower() == text):
                return allowed
        return text
    if isinstance(kind, _List | _Tuple | _Dict | _Object | _Pydantic):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
