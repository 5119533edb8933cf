"""Persisted state: tasks, runs, the run event log, cron schedules and workers.

Queries live in :mod:`django_tasks_live.store`; these classes only describe rows.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .cron import CRON_ALIASES, cron_problem, validate_cron, validate_timezone  # noqa: F401
from .states import ACTIVE, CLAIMABLE, TERMINAL, Status
from .waiting import auntil_finished, until_finished


class Task(models.Model):
    """One row per registered handler name, so the admin lists tasks that never ran."""

    name = models.CharField(max_length=200, unique=True)
    enabled = models.BooleanField(default=True)
    options = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Run(models.Model):
    id = models.BigAutoField(primary_key=True)
    task_name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # "live" for @tasks_live.task handlers, "django" for django.tasks functions.
    kind = models.CharField(max_length=10, default="live")
    backend = models.CharField(max_length=100, blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default")
    priority = models.IntegerField(default=0)
    run_after = models.DateTimeField(default=timezone.now)
    timeout = models.FloatField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    # Progress.
    progress_current = models.FloatField(null=True, blank=True)
    progress_total = models.FloatField(null=True, blank=True)
    progress_message = models.TextField(blank=True)
    percent = models.FloatField(null=True, blank=True)
    steps = models.JSONField(default=list, blank=True)
    # Outcome.
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_type = models.CharField(max_length=300, blank=True)
    traceback = models.TextField(blank=True)
    errors = models.JSONField(default=list, blank=True)  # one entry per failed attempt
    # Execution.
    worker_id = models.CharField(max_length=100, blank=True)
    worker_ids = models.JSONField(default=list, blank=True)
    # Times a worker was lost while holding this run before its handler began (those
    # losses use up no attempt, up to LOST_CLAIMS_LIMIT).
    claims_lost = models.PositiveSmallIntegerField(default=0)
    # Which engine executes the run ("builtin": tasks_worker, "django_q": a qcluster).
    executor = models.CharField(max_length=20, default="builtin")
    # When the run was last handed to its engine (engines other than builtin): a run
    # waiting with no hand-over since its last change is handed over by the sweeper.
    handed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Organisation.
    labels = models.JSONField(default=dict, blank=True)
    concurrency_key = models.CharField(max_length=200, blank=True)
    # Constraint groups (limits.py): 0 for a run no limit applies to (all that the hot
    # paths test); bits limits.SLOTS (holds slots until it ends) and limits.RATE.
    limited = models.PositiveSmallIntegerField(default=0)
    unique_key = models.CharField(max_length=200, null=True, blank=True)
    # A key shared only while the run waits (unique and debounced tasks): a claim takes
    # the run out of tl_run_pending_key, so the next start creates a new run.
    pending_key = models.CharField(max_length=200, null=True, blank=True)
    # The foreign keys below are mostly NULL. Their indexes leave NULL out (partial,
    # Meta.indexes) instead of Django's full ones: PostgreSQL writes an entry in every
    # index of a run at each claim, outcome and admission (none is a HOT update).
    # Chains and groups: the parent run and this run's place in it.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        db_index=False,
    )
    position = models.PositiveIntegerField(null=True, blank=True)
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns",
        db_index=False,
    )
    # Looked up through tl_run_one_per_fire_time (schedule, fire_time).
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs",
        db_index=False,
    )
    fire_time = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    class Meta:
        indexes = [
            # The claim query: claimable runs of a queue in priority, run_after, FIFO order.
            models.Index(
                fields=["queue", "-priority", "run_after", "id"],
                condition=Q(status__in=sorted(CLAIMABLE)),
                name="tl_run_claim",
            ),
            # The same for a worker that serves every queue (the default).
            models.Index(
                fields=["-priority", "run_after", "id"],
                condition=Q(status__in=sorted(CLAIMABLE)),
                name="tl_run_claim_any",
            ),
            # Per-status listings, newest first.
            models.Index(fields=["status", "-id"], name="tl_run_status"),
            models.Index(fields=["task_name", "status", "-id"], name="tl_run_task_status"),
            # Recovery: active runs per worker.
            models.Index(
                fields=["worker_id"],
                condition=Q(status__in=sorted(ACTIVE)),
                name="tl_run_active_worker",
            ),
            # Pruning and rollups: finished runs by end time.
            models.Index(fields=["finished_at"], condition=Q(finished_at__isnull=False),
                         name="tl_run_finished"),
            models.Index(fields=["parent"], condition=Q(parent__isnull=False),
                         name="tl_run_parent"),
            models.Index(fields=["rerun_of"], condition=Q(rerun_of__isnull=False),
                         name="tl_run_rerun_of"),
            models.Index(fields=["owner"], condition=Q(owner__isnull=False), name="tl_run_owner"),
            # The hand-over sweeper: waiting runs of other engines (builtin runs, the
            # bulk, are not in it, so their inserts and claims do not maintain it).
            models.Index(
                fields=["executor", "run_after"],
                condition=Q(status__in=sorted(CLAIMABLE)) & ~Q(executor="builtin"),
                name="tl_run_handover",
            ),
            # Run-once tasks: the completed run of a key.
            models.Index(fields=["unique_key", "status"], condition=Q(unique_key__isnull=False),
                         name="tl_run_unique_key"),
        ]
        # One per console action; authz says who may do what with them.
        permissions = [
            ("start_run", "Can start tasks"),
            ("cancel_run", "Can cancel runs"),
            ("rerun_run", "Can rerun runs"),
            ("pause_run", "Can pause and resume tasks and queues"),
        ]
        constraints = [
            # One run per schedule fire time, however many workers tick.
            models.UniqueConstraint(
                fields=["schedule", "fire_time"],
                condition=Q(schedule__isnull=False),
                name="tl_run_one_per_fire_time",
            ),
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=Q(unique_key__isnull=False) & ~Q(status__in=sorted(TERMINAL)),
                name="tl_run_unique_key_active",
            ),
            models.UniqueConstraint(
                fields=["pending_key"],
                condition=Q(pending_key__isnull=False) & Q(status__in=sorted(CLAIMABLE)),
                name="tl_run_pending_key",
            ),
        ]

    # Set by start()/start_or_get(): False when a unique task returned an existing run.
    created: bool = True

    def __str__(self) -> str:
        return f"{self.task_name} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL

    # What to_state() and an event's message read: a run loaded with only these (e.g. an
    # admission's RETURNING) makes its event without a query.
    STATE_FIELDS = ("id", "task_name", "status", "attempt", "max_attempts", "progress_current",
                    "progress_total", "percent", "progress_message", "steps", "labels",
                    "queue", "worker_id", "created_at", "started_at", "finished_at",
                    "run_after", "rerun_of_id", "parent_id", "position", "result", "error",
                    "error_type", "owner_id", "limited")

    def to_state(self) -> dict[str, Any]:
        """The public state of the run: what events carry and clients render."""
        state: dict[str, Any] = {
            "id": self.pk,
            "task": self.task_name,
            "status": self.status,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "progress": {
                "current": self.progress_current,
                "total": self.progress_total,
                "percent": self.percent,
                "message": self.progress_message,
            },
            "steps": public_steps(self.steps),
            "labels": self.labels,
            "queue": self.queue,
            "worker": self.worker_id or None,  # who holds a claimed or running run
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "run_after": _iso(self.run_after),
            "rerun_of": self.rerun_of_id,
            "parent": self.parent_id,
            "position": self.position,
        }
        if self.status == Status.COMPLETED:
            state["result"] = _summary(self.result)
        if self.error:
            state["error"] = f"{self.error_type}: {self.error}" if self.error_type else self.error
        return state

    # wait() lives here so `start(...).wait()` reads naturally (tasks_live.wait shares it).
    def wait(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        return until_finished(self.pk, self._reload, timeout, poll)

    async def await_(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        return await auntil_finished(self.pk, self._reload, timeout, poll)

    def _reload(self) -> Run:
        return type(self)._default_manager.using(self._state.db).get(pk=self.pk)


def public_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps as events carry them: a durable step's stored result stays on the row."""
    if not any("result" in step for step in steps):
        return steps
    return [{k: v for k, v in step.items() if k != "result"} for step in steps]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def _summary(result: Any, limit: int = 500) -> Any:
    """A result small enough for an event; large results are cut to a string preview."""
    import json

    text = json.dumps(result, default=str)
    return result if len(text) <= limit else text[:limit] + "…"


class LimitKey(models.Model):
    """One key of a constraint group (``<kind>:<group>:<value>``): the row transactions
    admitting runs of the key lock, its figures and what rates and cooldowns remember."""

    key = models.CharField(max_length=200, primary_key=True)
    cap = models.PositiveIntegerField(default=1)  # runs holding the key at once
    rate = models.PositiveIntegerField(null=True, blank=True)  # rate: starts per window
    window = models.FloatField(null=True, blank=True)  # rate window, cooldown gap (s)
    starts = models.JSONField(default=list, blank=True)  # rate: the latest start times
    finished_at = models.DateTimeField(null=True, blank=True)  # cooldown: the last end

    def __str__(self) -> str:
        return self.key


class RunLimit(models.Model):
    """A limited run's place in one key: waiting for room, or holding a slot (from
    admission until the run ends; a rate key's until the run starts)."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: tl_limit_run_key (run, key) serves lookups by run, and every
    # index here is written at admission and at the end of every limited run.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="limit_rows",
                            db_index=False)
    key = models.CharField(max_length=200)
    holding = models.BooleanField(default=False)
    priority = models.IntegerField(default=0)  # the run's: waiting rows go in claim order
    due = models.DateTimeField(default=timezone.now)  # the run's own run_after
    needs = models.PositiveSmallIntegerField(default=1)  # keys the run needs in all

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="tl_limit_run_key")]
        indexes = [
            models.Index(fields=["key", "-priority", "run"], condition=Q(holding=False),
                         name="tl_limit_waiting"),
            models.Index(fields=["key"], condition=Q(holding=True), name="tl_limit_holding"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} {'holds' if self.holding else 'waits for'} {self.key}"


class RunEvent(models.Model):
    """Append-only log; its id is the SSE event id and the replay cursor."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20)  # created | status | progress
    status = models.CharField(max_length=20, choices=Status.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["run", "id"], name="tl_event_run")]

    def __str__(self) -> str:
        return f"event {self.pk} run {self.run_id} {self.kind}:{self.status}"


class Schedule(models.Model):
    name = models.CharField(max_length=200, unique=True)
    task_name = models.CharField(max_length=200)
    cron = models.CharField(max_length=100, validators=[validate_cron])
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default")
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    # True for schedules declared in code (@task(cron=...)), synced by the worker.
    from_code = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="tl_schedule_due")]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron})"

    def clean(self) -> None:
        from .jsonvalues import ensure_json
        from .queues import check_queue
        from .registry import registry

        errors = {}
        if self.task_name and self.task_name not in registry:
            errors["task_name"] = registry.unknown_message(self.task_name)
        try:
            check_queue(self.queue)
        except ValueError as exc:
            errors["queue"] = str(exc)
        try:  # what every fire time would refuse: NUL, lone surrogates, deep nesting
            ensure_json(self.kwargs, "kwargs")
        except TypeError as exc:
            errors["kwargs"] = str(exc)
        if errors:
            raise ValidationError(errors)


class Worker(models.Model):
    id = models.CharField(max_length=100, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Set when its heartbeat expired and recovery took its runs (cleared if it comes back).
    lost_at = models.DateTimeField(null=True, blank=True)
    processed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-heartbeat_at"]

    def __str__(self) -> str:
        return self.id


class Lease(models.Model):
    """A named, expiring lease: one worker at a time does a periodic job (retention)."""

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.CharField(max_length=100, blank=True)
    until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} ({self.holder} until {self.until:%Y-%m-%d %H:%M:%S})"


class Pause(models.Model):
    """A paused task or queue: no worker claims its runs until the row is deleted
    (resume). Read by :mod:`django_tasks_live.pauses`; a handful of rows at most."""

    TASK, QUEUE = "task", "queue"

    kind = models.CharField(max_length=10, choices=[(TASK, "task"), (QUEUE, "queue")])
    name = models.CharField(max_length=200)
    reason = models.CharField(max_length=200, blank=True)
    paused_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="tl_pause_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} paused"


class Rollup(models.Model):
    """Runs finished in one minute (``span`` 60) or one hour (3600), per task, queue and
    final status: what the dashboard and the metrics endpoint read, so they cost
    O(minutes shown), never O(runs). Written by :mod:`django_tasks_live.rollups`; a row
    with an empty task name marks the period as rolled (zero runs is an answer too)."""

    span = models.PositiveIntegerField()  # seconds: 60 or 3600
    start = models.DateTimeField()
    task_name = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, blank=True)
    count = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)  # attempts beyond the first
    duration_sum = models.FloatField(default=0.0)  # seconds, over runs that started
    # Runs per duration bucket (rollups.DURATION_BUCKETS, then +Inf), not cumulative.
    buckets = models.JSONField(default=list)

    class Meta:
        constraints = [
            # Two web processes rolling the same period insert the same rows: one stays.
            models.UniqueConstraint(fields=["span", "start", "task_name", "queue", "status"],
                                    name="tl_rollup_one"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name or 'rolled'} {self.status} {self.start:%Y-%m-%d %H:%M} x{self.count}"
