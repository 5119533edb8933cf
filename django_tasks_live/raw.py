"""For the hot paths that read or write rows in raw SQL (a claim's or an admission's
``RETURNING``, a key lock's ``FOR UPDATE``, batched writes): model instances from raw
rows, converted the way the ORM converts them but without a queryset's per-row
machinery, and the one JSON parameter a batched statement takes."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Model, signals
from django.db.models.base import ModelState


def json_param(value: Any) -> str:
    """``value`` as the one JSON parameter of a batched statement (compact text): rows,
    keys or ids that the database unpacks (``json_each``, ``jsonb_to_recordset``)."""
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Shape:
    """Every concrete column of a model: as a SELECT list, their attribute names, and the
    ORM's converters (JSON, datetimes) by column index."""

    columns: str
    attnames: list[str]
    converters: list[tuple[int, Any, list[Any]]]


@functools.cache
def shape(model: type[Model], alias: str, names: tuple[str, ...] | None = None) -> Shape:
    """The :class:`Shape` of ``model`` on database ``alias`` (only the fields ``names``,
    by attribute name, if given: the others are deferred), worked out once."""
    conn = connections[alias]
    fields = [f for f in model._meta.concrete_fields if names is None or f.attname in names]
    converters = []
    for index, model_field in enumerate(fields):
        col = model_field.get_col(model._meta.db_table)
        found = conn.ops.get_db_converters(col) + model_field.get_db_converters(conn)
        if found:
            converters.append((index, col, found))
    columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
    return Shape(columns, [f.attname for f in fields], converters)


def instances[M: Model](model: type[M], rows: Iterable[Sequence[Any]], using: str,
                        names: tuple[str, ...] | None = None) -> list[M]:
    """``model`` instances from rows of ``shape(model, using, names).columns`` (fields not
    in ``names`` are deferred: read on first access, as with ``QuerySet.only()``)."""
    conn = connections[using]
    found = shape(model, using, names)
    converted = []
    for row in rows:
        values = list(row)
        for index, col, converters in found.converters:
            for convert in converters:
                values[index] = convert(values[index], col, conn)
        converted.append(values)
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        return [model.from_db(using, found.attnames, values) for values in converted]
    # What from_db() ends with, without Model.__init__'s per-field loop (a third to
    # nearly two thirds of the time per row) when no init signal is listened to.
    out = []
    for values in converted:
        instance = model.__new__(model)
        instance.__dict__.update(zip(found.attnames, values, strict=True))
        state = instance._state = ModelState()
        state.adding, state.db = False, using
        out.append(instance)
    return out
