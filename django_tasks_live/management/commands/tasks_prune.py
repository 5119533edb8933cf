"""``manage.py tasks_prune [--dry-run] [--keep-last N] [--days D]``: apply run retention."""

from __future__ import annotations

import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf, store


class Command(BaseCommand):
    help = (
        "Delete finished runs (and their events) outside the retention policy: a run is "
        "kept while it is among the newest N finished runs of its task (--keep-last) or "
        "finished less than D days ago (--days). Defaults: TASKS_LIVE RETENTION_KEEP_LAST "
        "and RETENTION_DAYS. Unfinished runs are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Values are checked in handle() so call_command(keep_last=...) is checked too.
        parser.add_argument("--dry-run", action="store_true",
                            help="Only count what would be deleted.")
        parser.add_argument("--keep-last", metavar="N",
                            help="Keep the newest N finished runs of each task.")
        parser.add_argument("--days", metavar="D",
                            help="Keep runs that finished less than D days ago.")
        parser.add_argument("--batch-size", default=1000, metavar="B",
                            help="Runs deleted per transaction (default 1000).")

    def handle(self, *args: Any, **options: Any) -> None:
        keep_last = _number(options.get("keep_last"), "--keep-last", store.PRUNE_MAX_KEEP_LAST,
                            whole=True)
        if keep_last is None:
            keep_last = _number(conf.get("RETENTION_KEEP_LAST"), "TASKS_LIVE['RETENTION_KEEP_LAST']",
                                store.PRUNE_MAX_KEEP_LAST, whole=True, text=False)
        days = _number(options.get("days"), "--days", store.PRUNE_MAX_DAYS)
        if days is None:
            days = _number(conf.get("RETENTION_DAYS"), "TASKS_LIVE['RETENTION_DAYS']",
                           store.PRUNE_MAX_DAYS, text=False)
        batch_size = _number(options.get("batch_size"), "--batch-size", store.PRUNE_MAX_BATCH,
                             whole=True)
        if keep_last is None and days is None:
            raise CommandError(
                "Nothing to prune by: pass --keep-last N and/or --days D, or set "
                "TASKS_LIVE['RETENTION_KEEP_LAST'] / TASKS_LIVE['RETENTION_DAYS']."
            )
        if not batch_size:
            raise CommandError("--batch-size must be at least 1.")
        counts = store.prune(keep_last, days, dry_run=bool(options.get("dry_run")),
                             batch_size=int(batch_size))
        kept = [f"the newest {keep_last} per task" if keep_last is not None else "",
                f"runs finished in the last {days:g} days" if days is not None else ""]
        verb = "Would delete" if options.get("dry_run") else "Deleted"
        self.stdout.write(f"{verb} {counts['runs']} runs and {counts['events']} events "
                          f"(keeping {' or '.join(filter(None, kept))}).")


def _number(value: Any, what: str, maximum: int, whole: bool = False, text: bool = True) -> Any:
    """``value`` (a number, or with ``text`` a command-line string) as a number from 0 to
    ``maximum``, or None."""
    if value is None:
        return None
    noun = "a whole number" if whole else "a number"
    parsed: float | int | None = None
    if isinstance(value, str) and text:
        try:
            parsed = int(value) if whole else float(value)
        except ValueError:
            parsed = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        parsed = value if not whole or isinstance(value, int) else None
    if parsed is None or not math.isfinite(parsed) or parsed < 0:
        raise CommandError(f"{what} must be {noun} >= 0, got {value!r}.")
    if parsed > maximum:  # the database would fail on it (out of range, too many variables)
        raise CommandError(f"{what} must be at most {maximum}, got {value!r}.")
    return parsed
