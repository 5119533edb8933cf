"""Start and stop the real subprocesses acceptance tests need (workers, daphne).

Each child gets the test settings and the name of the test database this test process
created, so it works on exactly the rows the test sees.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that shares this test's database."""
    from django.db import connection

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKS_LIVE_DB_NAME=str(connection.settings_dict["NAME"]),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Child:
    """A subprocess whose output goes to a log file the test can read."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.output() or self.proc.poll() is not None, timeout,
                   f"{text!r} in output of {self.args}")
        if text not in self.output():
            raise AssertionError(f"{self.args} exited ({self.proc.returncode}):\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition",
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}")


def worker_args(*options: str) -> list[str]:
    return [sys.executable, "-m", "django", "tasks_worker", *options]


def daphne_args(port: int, app: str = "tests.asgi:application") -> list[str]:
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]


@contextmanager
def children(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """``with children(tmp_path) as spawn: w = spawn(worker_args(...))`` — all stopped after."""
    started: list[Child] = []

    def spawn(args: list[str], **env: str) -> Child:
        child = Child(args, child_env(**env), tmp_path / f"child-{len(started)}.log")
        started.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in started:
            child.stop()
