"""Where runs execute: the built-in ``tasks_worker``, or a django-q2 cluster.

Each run records its engine in ``Run.executor`` when it is created: the task's own
``executor`` option, else ``TASKS_LIVE["QUEUE_EXECUTORS"][queue]``, else
``TASKS_LIVE["EXECUTOR"]``. Built-in workers claim only ``builtin`` runs; runs of
another engine are handed to it when their transaction commits (only the run id
travels) and that engine's processes claim them one by one (:mod:`.django_q`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db import transaction

from .. import conf
from ..engines import BUILTIN, DJANGO_Q, NAMES, check_name
from ..registry import registry

if TYPE_CHECKING:
    from ..models import Run

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN", "DJANGO_Q", "NAMES", "after_create", "check_name", "choose"]


def choose(task_name: str, queue: str) -> str:
    """The engine of a new run of ``task_name`` on ``queue``."""
    spec = registry.get(task_name) if task_name in registry else None
    if spec is not None and spec.executor:
        return spec.executor
    by_queue = conf.get("QUEUE_EXECUTORS") or {}
    return check_name(by_queue.get(queue) or conf.get("EXECUTOR"), "TASKS_LIVE['EXECUTOR']")


def after_create(runs: Sequence[Run], using: str) -> None:
    """Hand the due runs of other engines over once their transaction commits: a run
    whose transaction rolls back is never handed over. Runs not due yet are handed over
    by the engine's sweeper when they are."""
    due = [run.pk for run in runs if run.executor == DJANGO_Q and run.handed_at is not None]
    if not due:
        return
    from . import django_q

    transaction.on_commit(lambda: django_q.hand_over(due), using=using)
