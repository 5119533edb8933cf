"""``manage.py tasks_pause [--task T] [--queue Q] [--resume] [--reason R]``: pause or
resume a task or a queue for every worker; with no option, list what is paused."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import pauses


class Command(BaseCommand):
    help = (
        "Pause (or with --resume, resume) a task and/or a queue: no worker claims their "
        "runs, which stay pending, until they are resumed. With neither --task nor "
        "--queue, list the paused tasks and queues."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--task", help="The task name to pause or resume.")
        parser.add_argument("--queue", help="The queue name to pause or resume.")
        parser.add_argument("--resume", action="store_true", help="Resume instead of pausing.")
        parser.add_argument("--reason", default="", help="Why (shown with the pause).")

    def handle(self, *args: Any, **options: Any) -> None:
        task, queue = options.get("task"), options.get("queue")
        if task is None and queue is None:
            if options.get("resume"):
                raise CommandError("--resume needs --task and/or --queue.")
            listed = pauses.rows()
            for row in listed:
                why = f" ({row.reason})" if row.reason else ""
                self.stdout.write(f"{row.kind} {row.name} paused since "
                                  f"{row.created_at:%Y-%m-%d %H:%M:%S}{why}")
            if not listed:
                self.stdout.write("Nothing is paused.")
            return
        what = " and ".join(f"{kind} {name}" for kind, name in
                            (("task", task), ("queue", queue)) if name is not None)
        try:
            if options.get("resume"):
                found = pauses.resume(task=task, queue=queue)
                self.stdout.write(f"Resumed {what}." if found else f"{what} was not paused.")
            else:
                pauses.pause(task=task, queue=queue, reason=options.get("reason") or "",
                             by="manage.py tasks_pause")
                self.stdout.write(f"Paused {what}.")
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
