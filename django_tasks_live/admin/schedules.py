"""Cron schedules: validated cron, time zone and arguments, the last and next fire
times, the runs a schedule made, and **Run now** (a linked run that leaves the next
fire as it was)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_POST

from .. import authz, store
from ..models import Run, Schedule
from ..registry import UnknownTask, registry
from ..schedules import argument_errors, next_fire_time, run_now
from .common import run_link
from .forms import SafeJSONField

FIRE_TIMES_SHOWN = 3
RUNS_SHOWN = 10  # the schedule's page lists its newest runs, then links to all of them


class ScheduleForm(forms.ModelForm):
    kwargs = SafeJSONField(required=False, initial=dict,
                           help_text='Keyword arguments as a JSON object, e.g. {"rows": 10}.')

    class Meta:
        model = Schedule
        fields = ("name", "task_name", "cron", "timezone", "kwargs", "queue", "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "task_name" in self.fields:
            # help_text is rendered as HTML by the admin: task names are escaped.
            names = ", ".join(spec.name for spec in registry) or "none"
            self.fields["task_name"].help_text = escape(f"A registered task: {names}.")
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
        # A schedule from code has a read-only task name: check against the stored one.
        name = cleaned.get("task_name", self.instance.task_name)
        kwargs = cleaned.get("kwargs")
        if isinstance(kwargs, dict):
            # The checks create_schedule() makes (NUL, surrogates, NaN, depth, signature);
            # an unknown task name is the model's own error.
            error = argument_errors(name, kwargs).get("kwargs")
            if error:
                self.add_error("kwargs", error)
        return cleaned


def _next_fire_times(schedule: Schedule, count: int) -> list[dt.datetime]:
    times: list[dt.datetime] = []
    after = timezone.now()
    for _ in range(count):
        after = next_fire_time(schedule.cron, schedule.timezone, after)
        times.append(after)
    return times


def _runs_url(schedule: Schedule) -> str:
    """The runs changelist filtered to the runs ``schedule`` made."""
    return f"{reverse('admin:django_tasks_live_run_changelist')}?schedule={schedule.pk}"


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "task_name", "cron", "timezone", "enabled", "next_fires",
                    "last_run_at", "runs_link", "from_code")
    list_filter = ("enabled", "from_code")
    search_fields = ("name", "task_name")
    readonly_fields = ("next_fires", "next_run_at", "last_run_at", "recent_runs", "from_code")
    actions = ("enable", "disable", "run_now_action")
    change_form_template = "admin/django_tasks_live/schedule/change_form.html"

    def has_run_now_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Run now starts a run: the start permission, as the Tasks page's Start."""
        return self.has_view_permission(request, obj) and authz.can_start(
            request.user, obj.task_name if obj is not None else "")

    def get_urls(self) -> list[Any]:
        return [
            path("<int:schedule_id>/run-now/", self.admin_site.admin_view(self.run_now_view),
                 name="django_tasks_live_schedule_run_now"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: Any = None) -> HttpResponse:
        schedule = self.get_object(request, object_id)
        extra = {**(extra_context or {}),
                 "can_run_now": schedule is not None and self.has_run_now_permission(
                     request, schedule)}
        return super().change_view(request, object_id, form_url, extra)

    def run_now_view(self, request: HttpRequest, schedule_id: int) -> HttpResponse:
        return require_POST(self._run_now)(request, schedule_id)

    def _run_now(self, request: HttpRequest, schedule_id: int) -> HttpResponse:
        schedule = Schedule.objects.filter(pk=schedule_id).first()
        if schedule is None:
            raise Http404("No schedule with that id.")
        if not self.has_run_now_permission(request, schedule):
            raise PermissionDenied
        self._start_now(request, [schedule])
        return HttpResponseRedirect(reverse("admin:django_tasks_live_schedule_change",
                                            args=[schedule.pk]))

    @admin.action(description="Run selected schedules now", permissions=["run_now"])
    def run_now_action(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._start_now(request, list(queryset))

    def _start_now(self, request: HttpRequest, schedules: list[Schedule]) -> None:
        started: list[Run] = []
        for schedule in schedules:
            if not authz.can_start(request.user, schedule.task_name):
                self.message_user(request, f"Schedule {schedule.name!r} was not run: you may "
                                  f"not start {schedule.task_name!r}.", messages.ERROR)
                continue
            try:
                started.append(run_now(schedule, owner=request.user))
            except (UnknownTask, TypeError, ValueError) as exc:
                self.message_user(request, f"Schedule {schedule.name!r} was not run: {exc}",
                                  messages.ERROR)
        if started:
            self.message_user(request, format_html(
                "Started {} now; the next fire times are unchanged.", format_html_join(
                    ", ", "{} ({})", ((run_link(run.pk), run.task_name) for run in started))),
                messages.SUCCESS)

    @admin.display(description="runs")
    def runs_link(self, schedule: Schedule) -> SafeString:
        return format_html('<a href="{}">runs</a>', _runs_url(schedule))

    @admin.display(description="runs it made")
    def recent_runs(self, schedule: Schedule) -> SafeString:
        if schedule.pk is None:
            return mark_safe("—")
        # The schedule foreign-key index, newest first, a bounded page.
        runs = list(store.runs().filter(schedule_id=schedule.pk)
                    .values_list("id", "status", "fire_time", "created_at")[:RUNS_SHOWN])
        if not runs:
            return mark_safe("none yet")
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (run_link(run_id), status.replace("_", " "),
             f"fire time {timezone.localtime(fire):%Y-%m-%d %H:%M}" if fire
             else f"run now at {timezone.localtime(created):%Y-%m-%d %H:%M}")
            for run_id, status, fire, created in runs))
        return format_html('<table class="tl-facts">{}</table><a href="{}">all runs of this '
                           'schedule</a>', rows, _runs_url(schedule))

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
