"""Executor processes and what each is doing, so the supervisor can enforce hard limits."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings

from ..models import Run
from . import executor

logger = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")


@dataclass
class Assignment:
    run: Run
    started: float  # time.monotonic()
    deadline: float | None  # when the run is killed (its timeout plus the grace period)


class Slot:
    """One executor process; runs one run at a time."""

    def __init__(self, index: int, worker_id: str) -> None:
        self.index = index
        self.worker_id = worker_id
        self.assignment: Assignment | None = None
        self.ready = False
        self._start()

    def _start(self) -> None:
        parent_end, child_end = _spawn.Pipe()
        self.conn: Connection = parent_end
        self.process = _spawn.Process(
            target=executor.main,
            args=(child_end, settings.SETTINGS_MODULE, self.worker_id, os.getpid()),
            name=f"tasks-live-executor-{self.index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.ready = False

    @property
    def idle(self) -> bool:
        return self.ready and self.assignment is None and self.process.is_alive()

    def assign(self, run: Run, timeout: float | None, grace: float) -> None:
        now = time.monotonic()
        self.assignment = Assignment(run, now, now + timeout + grace if timeout else None)
        self.conn.send(run)

    def receive(self) -> tuple[Any, ...] | None:
        """The executor's next message, or None if its pipe closed."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def kill(self) -> None:
        """Hard stop (the handler ignores its context); a fresh executor replaces it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()
        self._start()

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()

    def restart(self) -> None:
        self.process.join(1)
        self.conn.close()
        self._start()
