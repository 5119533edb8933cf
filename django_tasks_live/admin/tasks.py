"""Registered handlers: read-only rows (they live in code), readable options, a Start
form per task built from the handler's signature."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from .. import api, authz, pauses, store
from ..models import Run, Task
from ..registry import TaskSpec, UnknownTask, registry
from ..stats import TaskFigures, latest_runs, snapshot
from . import pauses as pause_buttons
from .common import refuse_hidden_action, run_link, run_url
from .forms import ArgumentsForm, parameters
from .run_page import seconds
from .start_options import StartOptionsForm


def options_text(options: dict[str, Any]) -> list[tuple[str, str]]:
    """A task's options as (label, words) rows, e.g. ("Retries", "3, exponential backoff")."""
    rows = [("Queue", str(options.get("queue") or "default")),
            ("Priority", str(options.get("priority") or 0))]
    timeout = options.get("timeout")
    rows.append(("Timeout", f"{timeout:g} s" if timeout else "none"))
    retries = int(options.get("max_attempts") or 1) - 1
    rows.append(("Retries", f"{retries}, {options.get('backoff') or 'exponential'} backoff"
                 if retries > 0 else "none"))
    steps = options.get("steps") or []
    rows.append(("Steps", ", ".join(str(step[0]) for step in steps) if steps else "none"))
    rows.append(("Schedule", f"cron {options['cron']}" if options.get("cron") else "none"))
    return rows


def _startable_error(name: str) -> str | None:
    """Why the admin cannot start ``name`` with no arguments, or None if it can."""
    try:
        registry.get(name).check_arguments((), {})
    except UnknownTask as exc:
        return str(exc)
    except TypeError as exc:
        return f"needs arguments: use its Start form ({exc})"
    return None


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("name", "registered", "start_link", "paused", "description", "queue",
                    "options_summary", "latest_run", "last_24h", "durations")
    search_fields = ("name", "description")
    fields = ("name", "description", "options_table", "updated_at")
    readonly_fields = fields
    actions = ("start_tasks", "pause_tasks", "resume_tasks")
    change_list_template = "admin/django_tasks_live/task/change_list.html"

    def has_start_permission(self, request: HttpRequest) -> bool:
        return authz.can_start(request.user, "")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return authz.can_pause(request.user)

    def get_list_display(self, request: HttpRequest) -> Any:
        """No Start column for users who may not start; Pause/Resume buttons only for
        users who may pause (others see the state)."""
        shown = []
        for column in self.list_display:
            if column == "start_link" and not self.has_start_permission(request):
                continue
            if column == "paused" and self.has_pause_permission(request):
                column = "pause_control"
            shown.append(column)
        return shown


    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks come from @task in code

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a handler lives in code: its row has nothing to save

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # workers and this page re-create the rows of registered handlers

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        refuse_hidden_action(self, request)
        # List every registered handler, including those no worker has synced yet.
        known = set(store.task_names())
        store.sync_tasks(spec for spec in registry if spec.name not in known)
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return Task.objects.all()

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # The last day's figures from the shared snapshot (rollups, as the dashboard),
        # the latest runs in one query; kept on the rows (this admin instance is shared
        # by concurrent requests).
        names = [task.name for task in changelist.result_list]
        day = {figures.name: figures for figures in snapshot().tasks}
        latest = latest_runs(names)
        for task in changelist.result_list:
            task.day_figures = day.get(task.name)
            task.latest = latest.get(task.name)
        return changelist

    @staticmethod
    def _day(task: Task) -> TaskFigures | None:
        return getattr(task, "day_figures", None)

    @admin.display(description="last 24 h")
    def last_24h(self, task: Task) -> str:
        figures = self._day(task)
        if figures is None:
            return "—"
        total = figures.completed + figures.failed
        rate = f", {100 * figures.failed / total:.0f}% failed" if total else ""
        return f"{figures.completed:,} ok, {figures.failed:,} failed{rate}"

    @admin.display(description="duration p50 / p95 (≈)")
    def durations(self, task: Task) -> str:
        figures = self._day(task)
        if figures is None or figures.p50 is None or figures.p95 is None:
            return "—"
        return f"{seconds(figures.p50)} / {seconds(figures.p95)}"

    @admin.display(boolean=True, description="registered")
    def registered(self, task: Task) -> bool:
        return task.name in registry

    def startable(self, task: Task) -> bool:
        return _startable_error(task.name) is None

    @admin.display(description="start")
    def start_link(self, task: Task) -> str:
        if task.name not in registry:
            return "not in code"
        return format_html('<a class="button" href="{}">Start…</a>',
                           reverse("admin:django_tasks_live_task_start", args=[task.pk]))

    @admin.display(description="paused")
    def paused(self, task: Task) -> str:
        return pause_buttons.state("task", task.name, pauses.current())

    @admin.display(description="paused")
    def pause_control(self, task: Task) -> str:
        paused = task.name in pauses.current().tasks
        return format_html("{} {}", pause_buttons.state("task", task.name, pauses.current())
                           if paused else "", pause_buttons.button("task", task.name, paused,
                                                                   in_changelist=True))

    @admin.display(description="queue")
    def queue(self, task: Task) -> str:
        return task.options.get("queue", "default")

    @admin.display(description="options")
    def options_summary(self, task: Task) -> str:
        rows = [(label, words) for label, words in options_text(task.options)[2:] if words != "none"]
        return "; ".join(f"{label.lower()} {words}" for label, words in rows) or "—"

    @admin.display(description="options")
    def options_table(self, task: Task) -> str:
        return format_html('<table class="tl-options">{}</table>', format_html_join(
            "", "<tr><th>{}</th><td>{}</td></tr>", options_text(task.options)))

    @admin.display(description="latest run")
    def latest_run(self, task: Task) -> str:
        latest = getattr(task, "latest", None)
        if latest is None:
            return "never run"
        return format_html("{} {}", run_link(latest[0]), latest[1])

    @admin.action(description="Pause selected tasks", permissions=["pause"])
    def pause_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            pauses.pause(task=name, by=request.user.get_username())
        self.message_user(request, f"Paused {', '.join(names)}: no worker claims their runs "
                          "until they are resumed.", messages.SUCCESS)

    @admin.action(description="Resume selected tasks", permissions=["pause"])
    def resume_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        names = list(queryset.values_list("name", flat=True))
        found = sum(pauses.resume(task=name) for name in names)
        self.message_user(request, f"Resumed {found} of {len(names)} selected tasks "
                          "(the others were not paused).", messages.SUCCESS)

    @admin.action(description="Start selected tasks (no arguments)", permissions=["start"])
    def start_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        started: list[Run] = []
        for name in queryset.values_list("name", flat=True):
            error = _startable_error(name)
            if error:
                self.message_user(request, f"Task {name!r} was not started: {error}.", messages.ERROR)
                continue
            started.append(api.using(owner=request.user).start(name))
        if started:
            self.message_user(request, format_html("Started {}.", format_html_join(
                ", ", "{} ({})", ((run_link(run.pk), run.task_name) for run in started))),
                messages.SUCCESS)

    # -- the Start form ---------------------------------------------------------

    def get_urls(self) -> list[Any]:
        return [
            path("<int:task_id>/start/", self.admin_site.admin_view(self.start_view),
                 name="django_tasks_live_task_start"),
            path("pause/", self.admin_site.admin_view(require_POST(self.pause_view)),
                 name="django_tasks_live_task_pause"),
            path("queues/", self.admin_site.admin_view(self.queues_view),
                 name="django_tasks_live_task_queues"),
            *super().get_urls(),
        ]

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        return pause_buttons.act(self, request)

    def queues_view(self, request: HttpRequest) -> HttpResponse:
        return pause_buttons.queues_view(self, request)

    def start_view(self, request: HttpRequest, task_id: int) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied
        task = Task.objects.filter(pk=task_id).first()
        if task is None or task.name not in registry:
            raise Http404("No registered task with that id.")
        spec: TaskSpec = registry.get(task.name)
        form = ArgumentsForm(spec, request.POST if request.method == "POST" else None)
        options = StartOptionsForm(request.POST if request.method == "POST" else None,
                                   initial={"queue": spec.queue, "priority": spec.priority})
        if request.method == "POST" and form.is_valid() and options.is_valid():
            try:
                run = api.using(owner=request.user, **options.start_options()).start(
                    spec.name, **form.kwargs)
            except (TypeError, ValueError) as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, format_html("Started {} ({}).", run_link(run.pk), spec.name),
                                  messages.SUCCESS)
                return HttpResponseRedirect(run_url(run.pk))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Start {spec.name}",
            "opts": self.model._meta,
            "task": task,
            "spec": spec,
            "form": form,
            "options_form": options,
            "has_parameters": bool(parameters(spec)),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/django_tasks_live/task/start.html", context)



