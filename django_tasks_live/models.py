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

from .states import ACTIVE, CLAIMABLE, TERMINAL, Status


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
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Organisation.
    labels = models.JSONField(default=dict, blank=True)
    concurrency_key = models.CharField(max_length=200, blank=True)
    unique_key = models.CharField(max_length=200, null=True, blank=True)
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns"
    )
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    fire_time = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
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
            models.Index(fields=["finished_at"], name="tl_run_finished"),
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
        ]

    def __str__(self) -> str:
        return f"{self.task_name} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL

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
            "steps": self.steps,
            "labels": self.labels,
            "queue": self.queue,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "run_after": _iso(self.run_after),
            "rerun_of": self.rerun_of_id,
        }
        if self.status == Status.COMPLETED:
            state["result"] = _summary(self.result)
        if self.error:
            state["error"] = f"{self.error_type}: {self.error}" if self.error_type else self.error
        return state

    # wait() lives here so `start(...).wait()` reads naturally; it delegates to the api.
    def wait(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        from .api import wait

        return wait(self.pk, timeout=timeout, poll=poll)

    async def await_(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        from .api import await_run

        return await await_run(self.pk, timeout=timeout, poll=poll)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def _summary(result: Any, limit: int = 500) -> Any:
    """A result small enough for an event; large results are cut to a string preview."""
    import json

    text = json.dumps(result, default=str)
    return result if len(text) <= limit else text[:limit] + "…"


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


def validate_cron(value: str) -> None:
    from croniter import croniter

    if not isinstance(value, str) or not croniter.is_valid(value):
        raise ValidationError(f"{value!r} is not a valid cron expression.", code="invalid_cron")
    try:  # valid syntax that matches no date at all, e.g. "0 0 31 2 *"
        croniter(value, timezone.now()).get_next(float)
    except (ValueError, KeyError):
        raise ValidationError(f"{value!r} never fires.", code="invalid_cron") from None


def validate_timezone(value: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"{value!r} is not a known time zone.", code="invalid_tz") from exc


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
        from .registry import registry

        if self.task_name and self.task_name not in registry:
            raise ValidationError({"task_name": registry.unknown_message(self.task_name)})


class Worker(models.Model):
    id = models.CharField(max_length=100, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    processed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-heartbeat_at"]

    def __str__(self) -> str:
        return self.id
