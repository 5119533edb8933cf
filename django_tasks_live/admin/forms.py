"""Forms built from a handler's signature: Start and "Rerun with changed arguments".

One field per parameter after ``ctx``: ``int``, ``float``, ``bool`` and ``str`` get
typed fields, anything else a JSON field; defaults are filled in, parameters without
one are required. The arguments are then checked by :func:`arguments.validate`, the
validator of every entry point, so a bad value is an error on its field.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from django import forms

from ..arguments import ArgumentError, validate
from ..jsonvalues import ensure_json
from ..registry import TaskSpec

EXTRA = "tl_extra_kwargs"  # **kwargs handlers: a JSON object of further arguments


class SafeJSONField(forms.JSONField):
    """A JSON field whose undecodable or absurdly deep input is a form error, not a 500."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise forms.ValidationError("This JSON is nested too deeply.", code="invalid") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return data


def _hints(spec: TaskSpec) -> dict[str, Any]:
    try:  # resolves "int" annotations of modules using `from __future__ import annotations`
        return typing.get_type_hints(spec.func)
    except Exception:  # an annotation that does not resolve: fall back to JSON fields
        return {}


def _base(annotation: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of ``int``, ``int | None``, ``Optional[int]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def _field(param: inspect.Parameter, annotation: Any) -> forms.Field:
    kind, nullable = _base(annotation)
    has_default = param.default is not inspect.Parameter.empty
    default = param.default if has_default else None
    required = not has_default and not nullable
    label = param.name
    if kind is bool:
        return forms.BooleanField(label=label, required=False, initial=bool(default))
    if kind is int:
        return forms.IntegerField(label=label, required=required, initial=default)
    if kind is float:
        return forms.FloatField(label=label, required=required, initial=default)
    if kind is str:
        return forms.CharField(label=label, required=required, initial=default, strip=False,
                               empty_value=None if not required else "")
    hint = f"JSON ({getattr(kind, '__name__', str(kind))})" if kind is not inspect.Parameter.empty \
        else "JSON"
    return SafeJSONField(label=label, required=required, initial=default, help_text=hint,
                         widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


def parameters(spec: TaskSpec) -> list[inspect.Parameter]:
    """The handler's parameters after ``ctx`` that a form can fill (not ``*args``)."""
    params = list(spec.signature.parameters.values())[1:]
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class ArgumentsForm(forms.Form):
    """``ArgumentsForm(spec, data, initial_kwargs=...)``; ``.kwargs`` once valid."""

    def __init__(self, spec: TaskSpec, data: Any = None, *, initial_kwargs: Mapping[str, Any] | None = None,
                 prefix: str | None = None) -> None:
        super().__init__(data, prefix=prefix)
        self.spec = spec
        hints = _hints(spec)
        initial_kwargs = dict(initial_kwargs or {})
        for param in parameters(spec):
            field = _field(param, hints.get(param.name, param.annotation))
            if param.name in initial_kwargs:
                value = initial_kwargs.pop(param.name)
                field.initial = value
            self.fields[param.name] = field
        self.accepts_extra = any(p.kind == p.VAR_KEYWORD for p in spec.signature.parameters.values())
        if self.accepts_extra or initial_kwargs:
            self.fields[EXTRA] = SafeJSONField(
                label="other arguments", required=False, initial=initial_kwargs or None,
                help_text="A JSON object of further keyword arguments.",
                widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        kwargs: dict[str, Any] = {}
        for param in parameters(self.spec):
            value = cleaned.get(param.name)
            has_default = param.default is not inspect.Parameter.empty
            if value is None and has_default and param.default is not None:
                continue  # left empty: the handler's default applies
            if value is None and not has_default and param.name not in self.data:
                continue
            kwargs[param.name] = value
        extra = cleaned.get(EXTRA)
        if extra not in (None, ""):
            if not isinstance(extra, dict):
                self.add_error(EXTRA, 'Other arguments must be a JSON object, e.g. {"rows": 10}.')
                return cleaned
            kwargs.update(extra)
        try:
            ensure_json(kwargs, "arguments")
            # Plain JSON values (a JSON field's strings are a str subclass, JSONString).
            kwargs = json.loads(json.dumps(kwargs))
            # The one validator every entry point uses (annotations, signature).
            _, kwargs = validate(self.spec, (), kwargs)
        except ArgumentError as exc:
            # The error on the field of the parameter it names ("rows[2]" -> rows).
            field = re.split(r"[\[.]", exc.parameter or "", maxsplit=1)[0]
            self.add_error(field if field in self.fields else None, str(exc))
        except (TypeError, ValueError) as exc:
            self.add_error(None, str(exc))
        except RecursionError:
            self.add_error(None, "The arguments are nested too deeply.")
        self.kwargs = kwargs
        return cleaned


def pretty_json(value: Any) -> str:
    """Indented JSON for display (never raises: odd values fall back to ``str``)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)
