"""A Prometheus metrics endpoint (the optional ``metrics`` extra: ``prometheus_client``).

Route it yourself, next to the app's URLs::

    from django_tasks_live.metrics import metrics_view
    urlpatterns = [path("tasks/metrics", metrics_view), ...]

Protected: a staff user's session, or ``Authorization: Bearer <token>`` matching
``TASKS_LIVE["METRICS_TOKEN"]`` (401 without credentials, 403 with wrong ones). Each
scrape is served from :func:`django_tasks_live.stats.snapshot`, the read shared with
the dashboard (one per process per interval, from rollups and the unfinished runs),
so a scrape never scans the runs table, at any size.

Counters (``*_total`` and the duration histogram) count the runs rolled up since this
process first read them, seeded with the kept rollups (8 days): they grow while the
process lives and restart with it, which ``rate()`` handles. They trail the present by
about a minute (a minute is rolled once it has closed).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse

from . import conf, rollups, stats

PREFIX = "tasks_live"


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _allowed(request: HttpRequest) -> int | None:
    """None when the request may read metrics, else the status to answer (401/403)."""
    header = request.headers.get("Authorization", "")
    token = conf.get("METRICS_TOKEN")
    if header.startswith("Bearer "):
        given = header[len("Bearer "):].strip()
        if token and hmac.compare_digest(given.encode(), str(token).encode()):
            return None
        return 403
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return None if user.is_active and user.is_staff else 403
    return 401


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format (GET only)."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    refused = _allowed(request)
    if refused is not None:
        response = HttpResponse("Metrics need a staff login or a bearer token.\n",
                                status=refused, content_type="text/plain")
        if refused == 401:
            response["WWW-Authenticate"] = 'Bearer realm="tasks_live metrics"'
        return response
    if not available():
        return HttpResponse("prometheus_client is not installed "
                            "(pip install 'django-tasks-live[metrics]').\n",
                            status=503, content_type="text/plain")
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class SnapshotCollector:
    """prometheus_client collector over the shared snapshot (no query of its own)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        data = stats.snapshot()
        active = GaugeMetricFamily(f"{PREFIX}_runs", "Runs claimed, running or stopping, by status, "
                                   "task and queue (waiting runs: queue_depth).",
                                   labels=["status", "task", "queue"])
        for (task, queue, status), (n, _) in sorted(data.active.items()):
            active.add_metric([status, task, queue], n)
        yield active

        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Runs waiting (pending or retrying).",
                                  labels=["queue"])
        oldest = GaugeMetricFamily(f"{PREFIX}_queue_oldest_pending_age_seconds",
                                   "How long the queue's oldest due waiting run has been due.",
                                   labels=["queue"])
        for queue, waiting, first_due in data.queues:
            depth.add_metric([queue], waiting)
            age = (data.at - first_due).total_seconds() if first_due else 0.0
            oldest.add_metric([queue], max(0.0, age))
        yield depth
        yield oldest

        finished = CounterMetricFamily(f"{PREFIX}_runs_finished", "Runs finished, by final "
                                       "status, task and queue.", labels=["status", "task", "queue"])
        retries = CounterMetricFamily(f"{PREFIX}_run_retries", "Attempts beyond the first, of "
                                      "finished runs.", labels=["task", "queue"])
        duration = HistogramMetricFamily(f"{PREFIX}_run_duration_seconds", "Run duration from "
                                         "start to finish.", labels=["status", "task", "queue"])
        retried: dict[tuple[str, str], int] = {}
        for (task, queue, status), cell in sorted(data.finished.items()):
            finished.add_metric([status, task, queue], cell.count)
            key = (task, queue)
            retried[key] = retried.get(key, 0) + cell.retries
            cumulative, buckets = 0, []
            for bound, n in zip([*rollups.DURATION_BUCKETS, float("inf")], cell.buckets, strict=False):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([status, task, queue], buckets, cell.duration_sum)
        for (task, queue), n in sorted(retried.items()):
            retries.add_metric([task, queue], n)
        yield finished
        yield retries
        yield duration

        workers = GaugeMetricFamily(f"{PREFIX}_workers", "Workers by state (from heartbeats).",
                                    labels=["state"])
        for state, n in data.worker_states.items():
            workers.add_metric([state], n)
        yield workers
        yield GaugeMetricFamily(f"{PREFIX}_snapshot_timestamp_seconds",
                                "When the figures were read (they are shared for an interval).",
                                value=data.at.timestamp())
