"""The dashboard: counts per status, throughput per minute (last hour) and per hour
(last day), failure rate, duration p50/p95 per task, queue depth and oldest waiting
run per queue, live workers.

Every figure comes from :func:`django_tasks_live.stats.snapshot`: ONE read per web
process per ``stats.SNAPSHOT_INTERVAL``, shared by every viewer and every metrics
scrape (Oban #496: one stats query per viewer per second), built from pre-aggregated
rollups, so the page costs O(minutes shown), not O(runs). Charts are inline SVG drawn
with CSS classes and ``currentColor``, readable in the admin's light and dark themes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .. import stats
from .run_page import seconds
from .workers import uptime_text

INTERVAL = stats.SNAPSHOT_INTERVAL
TASKS_SHOWN = 50


def throughput_svg(bars: list[tuple[dt.datetime, int, int]], label: str, time_format: str,
                   width: int = 720, height: int = 160) -> SafeString:
    """Stacked bars (completed below, other outcomes above), one per period, with a
    tooltip per bar; every text is escaped by format_html."""
    peak = max((ok + bad for _, ok, bad in bars), default=0)
    scale = (height - 20) / (peak or 1)
    step = width / max(len(bars), 1)
    rows = []
    for i, (start, ok, bad) in enumerate(bars):
        h_ok, h_bad = ok * scale, bad * scale
        title = f"{timezone.localtime(start):{time_format}}: {ok:,} completed, {bad:,} not"
        rows.append((f"{i * step:.1f}", f"{height - h_ok:.1f}", f"{max(step - 1, 1):.1f}",
                     f"{h_ok:.1f}", f"{height - h_ok - h_bad:.1f}", f"{h_bad:.1f}", title))
    body = format_html_join(
        "", '<g><title>{6}</title><rect class="tl-ok" x="{0}" y="{1}" width="{2}" height="{3}"/>'
        '<rect class="tl-bad" x="{0}" y="{4}" width="{2}" height="{5}"/></g>', rows)
    first = timezone.localtime(bars[0][0]).strftime(time_format) if bars else ""
    return format_html(
        '<svg class="tl-chart" viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}">{}'
        '<text x="2" y="12" class="tl-axis">peak {} {}</text>'
        '<text x="2" y="{}" class="tl-axis">{}</text>'
        '<text x="{}" y="{}" class="tl-axis" text-anchor="end">now</text></svg>',
        width, height + 14, label, body, f"{peak:,}", label.split(",")[0].lower(),
        height + 13, first, width - 2, height + 13)


def _rate(bars: list[tuple[dt.datetime, int, int]]) -> str | None:
    ok, bad = sum(b[1] for b in bars), sum(b[2] for b in bars)
    return f"{100 * bad / (ok + bad):.1f}%" if ok + bad else None


def _age(moment: dt.datetime | None, now: dt.datetime) -> str:
    """How long a run has been due ("3 min 2 s"), or "not due yet"."""
    if moment is None:
        return ""
    waited = (now - moment).total_seconds()
    return seconds(waited) if waited > 0 else "not due yet"


def context() -> dict[str, Any]:
    data = stats.snapshot()
    now = data.at
    return {
        "figures": data,
        "chart": throughput_svg(data.minutes, "Runs finished per minute, last hour", "%H:%M"),
        "hour_chart": throughput_svg(data.hours, "Runs finished per hour, last day", "%a %H:00"),
        "finished_hour": sum(m[1] + m[2] for m in data.minutes),
        "finished_day": sum(h[1] + h[2] for h in data.hours),
        "failure_rate": _rate(data.minutes),
        "failure_rate_day": _rate(data.hours),
        "tasks": [(t, seconds(t.p50) if t.p50 is not None else "—",
                   seconds(t.p95) if t.p95 is not None else "—") for t in data.tasks[:TASKS_SHOWN]],
        "queues": [(queue, waiting, _age(oldest, now)) for queue, waiting, oldest in data.queues],
        "workers": [(w, uptime_text(w.started_at, now)) for w in data.workers],
        "interval": INTERVAL,
    }
