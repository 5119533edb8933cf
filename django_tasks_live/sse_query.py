"""What one event-stream connection asked for: filters and the replay cursor.

Parsed from ``?task=a,b&run=1&status=running&label=k:v&last_event_id=N`` (repeated
parameters or commas), bounded so a request cannot make the server hold unbounded
memory. Bad input raises :class:`BadStreamRequest` with a reason for the 400 response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from django.db.models import QuerySet

from . import conf, store
from .authz import Access
from .jsonvalues import check_text
from .models import Run
from .states import Status

MAX_QUERY_STRING = 16_384
MAX_EVENT_ID = 2**63 - 1
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_PARAMS = {"task", "run", "status", "label", "last_event_id"}


class BadStreamRequest(ValueError):
    """The request cannot be served; the message is the 400 response's reason."""


@dataclass(frozen=True)
class StreamQuery:
    tasks: frozenset[str] = frozenset()
    run_ids: frozenset[int] = frozenset()
    statuses: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, kind: str, state: dict[str, Any]) -> bool:
        """Is an event about ``state`` for this stream?

        The status filter applies to the snapshot and to progress; every status change
        of a run matching the other filters is delivered, so a client sees a run leave
        the status it filters on (and can drop it) instead of keeping a stale entry.
        """
        if self.tasks and state.get("task") not in self.tasks:
            return False
        if self.run_ids and state.get("id") not in self.run_ids:
            return False
        if self.statuses and kind != "status" and state.get("status") not in self.statuses:
            return False
        run_labels = state.get("labels") or {}
        return all(run_labels.get(key) == value for key, value in self.labels.items())

    def key(self) -> tuple[Any, ...]:
        """A hashable form of the filters."""
        return (self.tasks, self.run_ids, self.statuses, tuple(sorted(self.labels.items())))

    def runs(self, access: Access, *, with_status: bool) -> QuerySet[Run]:
        """The runs this stream may see, as a queryset (snapshot, replay, catch-up)."""
        labels = {**access.labels, **self.labels}
        if any(self.labels.get(key, value) != value for key, value in access.labels.items()):
            return Run.objects.none()  # the request asks for another tenant's label value
        return store.runs(
            task=self.tasks or None,
            status=(self.statuses or None) if with_status else None,
            run_ids=self.run_ids or None,
            labels=labels or None,
            owner_id=access.owner_id,
        )


def parse(query_string: bytes) -> tuple[StreamQuery, str | None]:
    """The filters and the raw ``last_event_id`` parameter of a stream request."""
    if len(query_string) > MAX_QUERY_STRING:
        raise BadStreamRequest(f"Query string longer than {MAX_QUERY_STRING} bytes.")
    try:
        params = parse_qs(query_string.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=2 * conf.get("SSE_MAX_FILTER_VALUES") + 10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadStreamRequest(f"Malformed query string: {exc}.") from exc
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise BadStreamRequest(
            f"Unknown parameter(s) {', '.join(unknown)}; use {', '.join(sorted(_PARAMS))}."
        )
    query = StreamQuery(
        tasks=frozenset(_values(params, "task")),
        run_ids=frozenset(_run_id(v) for v in _values(params, "run")),
        statuses=frozenset(_status(v) for v in _values(params, "status")),
        labels=parse_labels(_values(params, "label")),
    )
    last = params.get("last_event_id")
    return query, (last[-1] if last else None)


def parse_event_id(raw: str | None) -> int | None:
    """A ``Last-Event-ID`` as an int, or None when it is malformed."""
    raw = raw.strip() if isinstance(raw, str) else ""
    # Length first: int() of a 15,000-digit string raises (and costs) before any bound.
    if not raw or len(raw) > len(str(MAX_EVENT_ID)) or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= MAX_EVENT_ID else None


def _values(params: dict[str, list[str]], name: str) -> list[str]:
    values = [v.strip() for raw in params.get(name, []) for v in raw.split(",") if v.strip()]
    limit = conf.get("SSE_MAX_FILTER_VALUES")
    if len(values) > limit:
        raise BadStreamRequest(f"Too many {name} values ({len(values)}); at most {limit}.")
    for value in values:
        if len(value) > 200:
            raise BadStreamRequest(f"A {name} value is longer than 200 characters.")
        _check_text(value, name)
    return values


def _check_text(value: str, name: str) -> None:
    """Filters become query parameters: refuse what no database takes (NUL, surrogates)."""
    try:
        check_text(value, f"A {name} value")
    except TypeError as exc:
        raise BadStreamRequest(str(exc)) from None


def _run_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > MAX_EVENT_ID:
        raise BadStreamRequest(f"run must be a run id (a positive integer), got {value!r}.")
    return int(value)


def _status(value: str) -> str:
    if value not in Status.values:
        raise BadStreamRequest(
            f"Unknown status {value!r}; use one of {', '.join(Status.values)}."
        )
    return value


def parse_labels(values: list[str]) -> dict[str, str]:
    """``["tenant:acme", ...]`` as ``{"tenant": "acme"}``; the stream and the template
    tags read label filters with it (bad input raises :class:`BadStreamRequest`)."""
    labels: dict[str, str] = {}
    for value in values:
        _check_text(value, "label")
        key, sep, label_value = value.partition(":")
        if not sep or not _LABEL_KEY.match(key) or "__" in key:
            raise BadStreamRequest(
                f"label must be key:value with a key of letters, digits, '_', '.', '-', "
                f"got {value!r}."
            )
        if labels.get(key, label_value) != label_value:
            raise BadStreamRequest(f"label {key!r} given twice with different values.")
        labels[key] = label_value
    return labels
