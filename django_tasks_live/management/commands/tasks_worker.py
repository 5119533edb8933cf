"""``manage.py tasks_worker``: run a django-tasks-live worker."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...worker.supervisor import Supervisor, WorkerIdInUse

NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")


def positive_int(value: str, option: str, maximum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise CommandError(f"{option} must be a whole number, got {value!r}.") from None
    if not 1 <= number <= maximum:
        raise CommandError(f"{option} must be between 1 and {maximum}, got {number}.")
    return number


def queue_list(value: str) -> list[str]:
    queues = [q.strip() for q in value.split(",")]
    bad = [q for q in queues if not NAME.match(q)]
    if bad or not queues:
        raise CommandError(
            f"--queues takes comma-separated queue names (letters, digits, _.:@-); bad: {bad}."
        )
    return sorted(set(queues))


class Command(BaseCommand):
    help = "Run a worker that executes django-tasks-live runs (SIGTERM/SIGINT drains)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", default="1",
                            help="Executor processes (runs at once). Default 1.")
        parser.add_argument("--queues", default=None,
                            help="Comma-separated queues to serve. Default: all queues.")
        parser.add_argument("--burst", action="store_true",
                            help="Exit once no run is due and nothing is in flight.")
        parser.add_argument("--max-tasks", default=None,
                            help="Exit (gracefully) after this many runs.")
        parser.add_argument("--worker-id", default=None,
                            help="Stable worker id (default: host-pid-random).")

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = positive_int(options["concurrency"], "--concurrency", 256)
        queues = queue_list(options["queues"]) if options["queues"] is not None else None
        max_tasks = (positive_int(options["max_tasks"], "--max-tasks", 10**9)
                     if options["max_tasks"] is not None else None)
        worker_id = options["worker_id"]
        if worker_id is not None and not NAME.match(worker_id):
            raise CommandError(
                f"--worker-id must be 1-100 characters of letters, digits, _.:@-; got {worker_id!r}."
            )
        supervisor = Supervisor(concurrency=concurrency, queues=queues, burst=options["burst"],
                                max_tasks=max_tasks, worker_id=worker_id, stdout=self.stdout)
        try:
            code = supervisor.run()
        except WorkerIdInUse as exc:
            raise CommandError(str(exc)) from None
        if code:
            raise SystemExit(code)
