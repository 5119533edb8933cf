"""The admin as an operations console.

Runs: per-status, per-task and per-queue filtering, progress, Cancel and Rerun (as bulk
actions and as buttons on a run's page), the run's timeline. Schedules: validated cron,
time zone and arguments, with a preview of the next fire times. Tasks: every registered
handler, with a Start action. Workers: alive, lost or stopped, from their heartbeat.

Every read and write of runs goes through :mod:`store` and :mod:`api`, so the admin
follows the same lifecycle rules (and emits the same live events) as everything else.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from . import api, conf, store
from .models import Run, RunEvent, Schedule, Task, Worker
from .registry import UnknownTask, registry
from .states import TERMINAL

EVENTS_SHOWN = 50
FIRE_TIMES_SHOWN = 3
# What starting, canceling or rerunning one run may raise: reported as a message for that run.
ACTION_ERRORS = (ValueError, TypeError, UnknownTask, ObjectDoesNotExist)


def _run_link(run_id: int) -> str:
    url = reverse("admin:django_tasks_live_run_change", args=[run_id])
    return format_html('<a href="{}">#{}</a>', url, run_id)


def _report(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    items: Iterable[Any],
    act: Callable[[Any], Run],
    label: Callable[[Any], str],
    verb: str,
) -> list[Run]:
    """Apply ``act`` to each item; one error message per failure, one summary for the rest."""
    done: list[Run] = []
    for item in items:
        try:
            done.append(act(item))
        except ACTION_ERRORS as exc:
            modeladmin.message_user(request, f"{label(item)}: {exc}", messages.ERROR)
    if done:
        links = format_html_join(", ", "{}", ((_run_link(run.pk),) for run in done))
        modeladmin.message_user(request, format_html("{} {}.", verb, links), messages.SUCCESS)
    return done


# ---------------------------------------------------------------- runs


class TaskNameFilter(admin.SimpleListFilter):
    """Task choices from the registry and Task rows, never a scan of the runs table."""

    title = "task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = {spec.name for spec in registry} | set(store.task_names())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(task_name=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        queues = {"default"} | {spec.queue for spec in registry}
        return [(queue, queue) for queue in sorted(queues)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(queue=self.value()) if self.value() else queryset


class LatestEventsFormSet(BaseInlineFormSet):
    """Only the newest events of a run: a busy run can have thousands."""

    def get_queryset(self) -> Any:
        if not hasattr(self, "_latest"):
            self._latest = store.run_events(self.instance.pk, EVENTS_SHOWN) if self.instance.pk else []
        return self._latest


class RunEventInline(admin.TabularInline):
    model = RunEvent
    formset = LatestEventsFormSet
    fields = ("id", "created_at", "kind", "status", "summary")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = f"Timeline (newest {EVENTS_SHOWN} events)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="details")
    def summary(self, event: RunEvent) -> str:
        progress = event.data.get("progress") or {}
        parts = [str(progress.get("message") or "")]
        if progress.get("percent") is not None:
            parts.append(f"{progress['percent']:.0f}%")
        if event.data.get("error"):
            parts.append(str(event.data["error"]))
        return " · ".join(part for part in parts if part)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = (
        "id", "task_name", "status_badge", "progress_bar", "attempts", "queue",
        "created_at", "started_at", "finished_at",
    )
    list_display_links = ("id", "task_name")
    list_filter = ("status", TaskNameFilter, QueueFilter, "kind")
    search_fields = ("=id", "task_name", "worker_id", "error")
    date_hierarchy = None
    list_per_page = 50
    # COUNT(*) over millions of runs on every page view is the slow part of a changelist.
    show_full_result_count = False
    actions = ("cancel_runs", "rerun_runs")
    inlines = (RunEventInline,)
    fieldsets = (
        (None, {"fields": ("controls", "task_name", "kind", "status", "queue", "priority",
                           "attempt", "max_attempts", "owner", "labels", "rerun_of", "schedule")}),
        ("Progress", {"fields": ("percent", "progress_current", "progress_total",
                                 "progress_message", "steps")}),
        ("Arguments", {"fields": ("args", "kwargs")}),
        ("Outcome", {"fields": ("result", "error_type", "error", "traceback", "errors")}),
        ("Execution", {"fields": ("created_at", "run_after", "started_at", "finished_at",
                                  "updated_at", "cancel_requested_at", "timeout", "worker_id",
                                  "worker_ids", "backend", "concurrency_key", "unique_key",
                                  "fire_time")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return store.runs()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["controls", *(f.name for f in Run._meta.fields)]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if self.has_manage_permission(request):
            return self.fieldsets
        (name, first), *rest = self.fieldsets
        fields = tuple(f for f in first["fields"] if f != "controls")
        return ((name, {**first, "fields": fields}), *rest)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started from Tasks (Start) or code

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Saving the form would overwrite a live row with stale values: runs are view-only,
        # and change only through the lifecycle (Cancel / Rerun, see has_manage_permission).
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retention prunes finished runs; a running one must not vanish

    def has_manage_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Cancel and Rerun: for users with Django's "change run" permission."""
        return request.user.has_perm("django_tasks_live.change_run")

    # -- columns ----------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> str:
        return format_html('<span class="tl-status tl-status-{}">{}</span>',
                           run.status, run.get_status_display())

    @admin.display(description="progress", ordering="percent")
    def progress_bar(self, run: Run) -> str:
        if run.percent is None:
            return "—"
        return format_html('<progress max="100" value="{}"></progress> {}%',
                           f"{run.percent:.0f}", f"{run.percent:.0f}")

    @admin.display(description="attempt")
    def attempts(self, run: Run) -> str:
        return f"{run.attempt}/{run.max_attempts}"

    @admin.display(description="actions")
    def controls(self, run: Run) -> str:
        """Buttons that post the change form to the cancel/rerun views (no nested forms)."""
        if run.pk is None:
            return "—"
        if run.status in TERMINAL:
            name, label = "rerun", "Rerun"
        else:
            name, label = "cancel", "Cancel"
        url = reverse(f"admin:django_tasks_live_run_{name}", args=[run.pk])
        return format_html('<button type="submit" class="button" formaction="{}">{}</button>',
                           url, label)

    # -- actions ----------------------------------------------------------------

    @admin.action(description="Cancel selected runs", permissions=["manage"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _report(self, request, queryset.values_list("id", flat=True), api.cancel,
                lambda run_id: f"Run #{run_id}", "Canceled")

    @admin.action(description="Rerun selected runs", permissions=["manage"])
    def rerun_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _report(self, request, queryset.values_list("id", flat=True), api.rerun,
                lambda run_id: f"Run #{run_id}", "Started reruns")

    # -- one run's buttons ------------------------------------------------------

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:run_id>/cancel/", wrap(self.cancel_view), name="django_tasks_live_run_cancel"),
            path("<int:run_id>/rerun/", wrap(self.rerun_view), name="django_tasks_live_run_rerun"),
            *super().get_urls(),
        ]

    def _one_run_view(self, request: HttpRequest, run_id: int, act: Callable[[int], Run],
                      verb: str) -> HttpResponse:
        if not self.has_manage_permission(request):
            raise PermissionDenied
        done = _report(self, request, [run_id], act, lambda rid: f"Run #{rid}", verb)
        target = done[0].pk if done else run_id
        return HttpResponseRedirect(reverse("admin:django_tasks_live_run_change", args=[target]))

    def cancel_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        return require_POST(self._one_run_view)(request, run_id, api.cancel, "Canceled")

    def rerun_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        return require_POST(self._one_run_view)(request, run_id, api.rerun, "Started rerun")


# ---------------------------------------------------------------- schedules


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ("name", "task_name", "cron", "timezone", "kwargs", "queue", "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "task_name" in self.fields:
            names = ", ".join(spec.name for spec in registry) or "none"
            self.fields["task_name"].help_text = f"A registered task: {names}."
        if "cron" in self.fields:
            self.fields["cron"].help_text = 'Five fields, e.g. "*/15 * * * *" or "0 3 * * mon".'

    def clean_kwargs(self) -> Any:
        kwargs = self.cleaned_data.get("kwargs")
        if kwargs in (None, ""):
            return {}
        if not isinstance(kwargs, dict):
            raise forms.ValidationError("Arguments must be a JSON object, e.g. {\"rows\": 10}.")
        return kwargs

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        name, kwargs = cleaned.get("task_name"), cleaned.get("kwargs")
        if name in registry and isinstance(kwargs, dict):
            try:
                registry.get(name).check_arguments((), kwargs)
            except TypeError as exc:
                self.add_error("kwargs", str(exc))
        return cleaned


def _next_fire_times(schedule: Schedule, count: int) -> list[dt.datetime]:
    from .schedules import next_fire_time

    times: list[dt.datetime] = []
    after = timezone.now()
    for _ in range(count):
        after = next_fire_time(schedule.cron, schedule.timezone, after)
        times.append(after)
    return times


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "task_name", "cron", "timezone", "enabled", "next_fires",
                    "last_run_at", "from_code")
    list_filter = ("enabled", "from_code")
    search_fields = ("name", "task_name")
    readonly_fields = ("next_fires", "next_run_at", "last_run_at", "from_code")
    actions = ("enable", "disable")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(self.readonly_fields)
        if obj is not None and obj.from_code:
            # Declared with @task(cron=...): the worker re-syncs these from code.
            fields += ["name", "task_name", "cron", "timezone", "queue"]
        return fields

    @admin.display(description="next fire times")
    def next_fires(self, schedule: Schedule) -> str:
        if not schedule.enabled:
            return "disabled"
        try:
            times = _next_fire_times(schedule, FIRE_TIMES_SHOWN)
        except ValueError as exc:  # a row saved around the validators (e.g. by raw SQL)
            return str(exc)
        zone = zoneinfo.ZoneInfo(schedule.timezone)
        return format_html_join(mark_safe("<br>"), "{}", (
            (t.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),) for t in times))

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        if {"cron", "timezone", "enabled"} & set(form.changed_data) or obj.next_run_at is None:
            # The scheduler fires at next_run_at: keep it in step with the edited rule.
            obj.next_run_at = _next_fire_times(obj, 1)[0]
        super().save_model(request, obj, form, change)

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset.filter(enabled=False):
            schedule.enabled = True
            schedule.next_run_at = _next_fire_times(schedule, 1)[0]
            schedule.save(update_fields=["enabled", "next_run_at"])
        self.message_user(request, "Enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} schedule(s).", messages.SUCCESS)


# ---------------------------------------------------------------- tasks


def _startable_error(name: str) -> str | None:
    """Why the admin cannot start ``name`` with no arguments, or None if it can."""
    try:
        registry.get(name).check_arguments((), {})
    except UnknownTask as exc:
        return str(exc)
    except TypeError as exc:
        return f"needs arguments, start it from code ({exc})"
    return None


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("name", "registered", "startable", "description", "queue", "options_summary",
                    "latest_run")
    search_fields = ("name", "description")
    readonly_fields = ("name", "description", "options", "updated_at")
    fields = ("name", "enabled", "description", "options", "updated_at")
    actions = ("start_tasks",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks come from @task in code

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # List every registered handler, including those no worker has synced yet.
        known = set(store.task_names())
        store.sync_tasks(spec for spec in registry if spec.name not in known)
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return store.tasks_with_latest_run()

    @admin.display(boolean=True, description="registered")
    def registered(self, task: Task) -> bool:
        return task.name in registry

    @admin.display(boolean=True, description="startable")
    def startable(self, task: Task) -> bool:
        return _startable_error(task.name) is None

    @admin.display(description="queue")
    def queue(self, task: Task) -> str:
        return task.options.get("queue", "default")

    @admin.display(description="options")
    def options_summary(self, task: Task) -> str:
        opts = task.options
        parts = []
        if opts.get("timeout"):
            parts.append(f"timeout {opts['timeout']:g}s")
        if opts.get("max_attempts", 1) > 1:
            parts.append(f"{opts['max_attempts'] - 1} retries ({opts.get('backoff')})")
        if opts.get("steps"):
            parts.append(f"{len(opts['steps'])} steps")
        if opts.get("cron"):
            parts.append(f"cron {opts['cron']}")
        return ", ".join(parts) or "—"

    @admin.display(description="latest run")
    def latest_run(self, task: Task) -> str:
        run_id = getattr(task, "latest_run_id", None)
        if run_id is None:
            return "never run"
        return format_html("{} {}", _run_link(run_id), task.latest_run_status)

    @admin.action(description="Start selected tasks (no arguments)")
    def start_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        if not request.user.has_perm("django_tasks_live.add_run"):
            self.message_user(request, "You may not start runs (needs the 'add run' permission).",
                              messages.ERROR)
            return

        def start(name: str) -> Run:
            error = _startable_error(name)
            if error:
                raise ValueError(error)
            return api.using(owner=request.user).start(name)

        _report(self, request, queryset.values_list("name", flat=True), start,
                lambda name: f"Task {name!r}", "Started")


# ---------------------------------------------------------------- workers


def worker_state(worker: Worker, now: dt.datetime | None = None) -> str:
    """"stopped" after a clean exit, "lost" once its heartbeat is older than the timeout."""
    if worker.stopped_at is not None:
        return "stopped"
    age = ((now or timezone.now()) - worker.heartbeat_at).total_seconds()
    return "lost" if age > conf.get("HEARTBEAT_TIMEOUT") else "alive"


class WorkerStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("alive", "alive"), ("lost", "lost"), ("stopped", "stopped")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Worker]) -> QuerySet[Worker]:
        cutoff = timezone.now() - dt.timedelta(seconds=conf.get("HEARTBEAT_TIMEOUT"))
        running = queryset.filter(stopped_at__isnull=True)
        return {
            "alive": running.filter(heartbeat_at__gte=cutoff),
            "lost": running.filter(heartbeat_at__lt=cutoff),
            "stopped": queryset.filter(stopped_at__isnull=False),
        }.get(self.value() or "", queryset)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("id", "state", "hostname", "pid", "queues", "concurrency", "processed",
                    "started_at", "heartbeat_at")
    list_filter = (WorkerStateFilter,)
    search_fields = ("id", "hostname")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows are the workers' own heartbeats

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a live worker's row would make recovery treat its runs as lost.
        return obj is not None and worker_state(obj) != "alive" and super().has_delete_permission(
            request, obj)

    @admin.display(description="state")
    def state(self, worker: Worker) -> str:
        state = worker_state(worker)
        return format_html('<span class="tl-worker-{}">{}</span>', state, state)

