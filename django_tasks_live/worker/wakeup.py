"""Wake an idle supervisor as soon as runs are inserted, or a task or queue is paused
or resumed (PostgreSQL LISTEN/NOTIFY)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections

from ..pauses import PAUSE_CHANNEL
from ..store import NOTIFY_CHANNEL

logger = logging.getLogger(__name__)


class Listener:
    """A dedicated autocommit connection that LISTENs; ``fileno()`` joins the select loop.

    On other databases it is inert and the supervisor polls.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._conn: Any = None
        self.pauses_changed = False  # a pause or resume was announced (read and cleared by the caller)

    @property
    def active(self) -> bool:
        return self._conn is not None

    def open(self) -> bool:
        wrapper = connections[self.alias]
        if wrapper.vendor != "postgresql":
            return False
        try:
            conn = wrapper.get_new_connection(wrapper.get_connection_params())
            conn.autocommit = True
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            conn.execute(f"LISTEN {PAUSE_CHANNEL}")
        except Exception as exc:  # database down: poll until it is back
            logger.warning("LISTEN unavailable (%s); polling instead", exc)
            return False
        self._conn = conn
        return True

    def fileno(self) -> int:
        return self._conn.fileno()

    def drain(self) -> int:
        """Consume pending notifications; returns how many new-run ones arrived (a
        pause or resume sets ``pauses_changed`` instead)."""
        if self._conn is None:
            return 0
        try:
            new_runs = 0
            for notify in self._conn.notifies(timeout=0):
                if notify.channel == PAUSE_CHANNEL:
                    self.pauses_changed = True
                else:
                    new_runs += 1
            return new_runs
        except Exception as exc:
            logger.warning("LISTEN connection lost (%s)", exc)
            self.close()
            return 1  # wake up and poll

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
