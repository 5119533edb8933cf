"""Runs: the changelist (tabs, filters, search, live rows), one run's page and its buttons."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from .. import admission, api, authz, bulk, pauses, store
from ..models import Run
from ..registry import UnknownTask, registry
from ..states import TERMINAL
from . import dashboard, run_page
from .actions import confirm_or_run, report_cancel, report_rerun
from .changelist import (
    CappedPaginator,
    ExecutorFilter,
    HiddenChoicesFilter,
    LabelFilter,
    QueueFilter,
    RunChangeList,
    ScheduleFilter,
    TaskNameFilter,
    WorkerFilter,
    count_cap,
    search,
)
from .common import live_config, refuse_hidden_action, run_link, run_url
from .forms import ArgumentsForm

# What canceling or rerunning one run may raise: reported as a message, never a 500.
ACTION_ERRORS = (ValueError, TypeError, UnknownTask, ObjectDoesNotExist)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "task_name", "status_badge", "progress_bar", "attempts", "queue",
                    "created", "duration")
    list_display_links = ("id", "task_name")
    list_filter = (("status", HiddenChoicesFilter), TaskNameFilter, QueueFilter, LabelFilter,
                   WorkerFilter, ExecutorFilter, ("created_at", admin.DateFieldListFilter),
                   ("finished_at", admin.DateFieldListFilter), ScheduleFilter)
    search_fields = ("task_name",)  # shows the box; get_search_results does the search
    search_help_text = "Run id, task name, error type or words of the error message."
    list_per_page = 50
    # COUNT(*) over millions of runs on every page view is the slow part of a changelist.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a facet is a COUNT per filter choice: scans at 1M
    actions = ("cancel_runs", "rerun_runs")
    change_list_template = "admin/django_tasks_live/run/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return store.runs()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[RunChangeList]:
        return RunChangeList

    def get_paginator(self, request: HttpRequest, queryset: QuerySet[Run], per_page: int,
                      orphans: int = 0, allow_empty_first_page: bool = True) -> CappedPaginator:
        return CappedPaginator(queryset, per_page, orphans, allow_empty_first_page,
                               cap=count_cap(request.GET, request.GET.get("q", "")))

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Run],
                           search_term: str) -> tuple[QuerySet[Run], bool]:
        return search(queryset, search_term), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started from Tasks (Start) or code

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Saving a form would overwrite a live row with stale values: runs are view-only,
        # and change only through the lifecycle (Cancel / Rerun, see has_cancel_permission).
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retention prunes finished runs; a running one must not vanish

    def has_cancel_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Cancel (the button and the action): ``cancel_run`` (or ``change_run``)."""
        return authz.can_cancel_any(request.user)

    def has_rerun_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rerun starts a run: ``rerun_run`` (or ``change_run``) and the start permission."""
        return authz.can_rerun_any(request.user)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        refuse_hidden_action(self, request)
        return super().changelist_view(request, extra_context)

    # -- columns (data-tl-* marks what the live script patches) -----------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> str:
        badge = format_html('<span class="tl-status tl-status-{}" data-tl-field="status" '
                            'data-tl-run="{}" data-tl-status="{}">{}</span>',
                            run.status, run.pk, run.status, run.get_status_display())
        reason = pauses.current().run_reason(run)
        if reason:  # why it waits (the live script replaces the badge once it is claimed)
            return format_html('{} <span class="tl-paused" title="{}">paused</span>', badge, reason)
        if admission.is_waiting(run):  # held back by its limits (the message says which)
            return format_html('{} <span class="tl-paused tl-limited" title="{}">limited</span>',
                               badge, run.progress_message)
        return badge

    @admin.display(description="created", ordering="id")
    def created(self, run: Run) -> str:
        local = timezone.localtime(run.created_at)
        same_day = local.date() == timezone.localdate()
        return format_html('<time datetime="{}" title="{}">{}</time>', run.created_at.isoformat(),
                           local.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M"))

    @admin.display(description="progress")
    def progress_bar(self, run: Run) -> str:
        percent = "" if run.percent is None else f"{run.percent:.0f}"
        return format_html(
            '<span class="tl-progress" data-tl-field="progress">'
            '<progress max="100" value="{}"{}></progress> <span data-tl-field="percent">{}</span>'
            '<span class="tl-message" data-tl-field="message">{}</span></span>',
            percent or 0, "" if percent else mark_safe(" hidden"),
            f"{percent}%" if percent else "—", run_page.outcome_text(run))

    @admin.display(description="attempt")
    def attempts(self, run: Run) -> str:
        return format_html('<span data-tl-field="attempt">{}/{}</span>', run.attempt,
                           run.max_attempts)

    @admin.display(description="duration")
    def duration(self, run: Run) -> str:
        return format_html('<span data-tl-field="duration" data-tl-started="{}" data-tl-finished="{}">'
                           '{}</span>',
                           run.started_at.isoformat() if run.started_at else "",
                           run.finished_at.isoformat() if run.finished_at and run.status in TERMINAL
                           else "", run_page.seconds(run_page.duration(run)) or "—")

    # -- bulk actions -----------------------------------------------------------

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> Any:
        return confirm_or_run(self, request, queryset, verb="Cancel", run=bulk.cancel_matching,
                              report=report_cancel)

    @admin.action(description="Rerun selected runs", permissions=["rerun"])
    def rerun_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> Any:
        return confirm_or_run(self, request, queryset, verb="Rerun", run=bulk.rerun_matching,
                              report=report_rerun)

    # -- one run's page and buttons ---------------------------------------------

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:run_id>/cancel/", wrap(self.cancel_view), name="django_tasks_live_run_cancel"),
            path("<int:run_id>/rerun/", wrap(self.rerun_view), name="django_tasks_live_run_rerun"),
            path("<int:run_id>/rerun-with/", wrap(self.rerun_with_view),
                 name="django_tasks_live_run_rerun_with"),
            path("dashboard/", wrap(self.dashboard_view), name="django_tasks_live_dashboard"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method != "GET":
            raise PermissionDenied  # nothing to save: runs change through their buttons
        run = self._run_or_404(object_id)
        context = {
            **self.admin_site.each_context(request),
            **run_page.context(run),
            "title": f"{run.task_name} #{run.pk}",
            "opts": self.model._meta,
            "can_cancel": self.has_cancel_permission(request),
            "can_rerun": self.has_rerun_permission(request),
            "paused_reason": pauses.current().run_reason(run),
            "limited_reason": run.progress_message if admission.is_waiting(run) else "",
            "pauses_url": reverse("admin:django_tasks_live_task_queues"),
            "can_rerun_with": run.kind != "django" and run.task_name in registry,
            "tl_live": live_config(f"run={run.pk}", [run]),
            "media": self.media,
        }
        return TemplateResponse(request, "admin/django_tasks_live/run/page.html", context)

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**dashboard.context(), "opts": self.model._meta}
        if request.GET.get("fragment"):  # the page's refresh: the body only
            return TemplateResponse(request, "admin/django_tasks_live/dashboard_body.html", context)
        return TemplateResponse(request, "admin/django_tasks_live/dashboard.html", {
            **self.admin_site.each_context(request), **context, "title": "Tasks dashboard"})

    def _run_or_404(self, run_id: Any) -> Run:
        try:
            return store.get_run(int(run_id))
        except (ValueError, TypeError, Run.DoesNotExist):
            raise Http404(f"Run {run_id!r} does not exist.") from None

    def _act_on_one(self, request: HttpRequest, run_id: int, act: Any, say: Any) -> HttpResponse:
        try:
            run = act(run_id)
        except ACTION_ERRORS as exc:
            self.message_user(request, f"Run #{run_id}: {_refusal(exc)}", messages.ERROR)
            return HttpResponseRedirect(run_url(run_id))
        self.message_user(request, say(run), messages.SUCCESS)
        return HttpResponseRedirect(run_url(run.pk))

    def cancel_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        def say(run: Run) -> str:
            if run.status == "canceled":
                return format_html("Canceled {}: it had not started.", run_link(run.pk))
            return format_html("Cancel requested for {}: it stops at its handler's next check "
                               "and then shows as canceled.", run_link(run.pk))

        if not self.has_cancel_permission(request):
            raise PermissionDenied
        return require_POST(self._act_on_one)(request, run_id, api.cancel, say)

    def rerun_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        def say(run: Run) -> str:
            return format_html("Started {}, a rerun of {}.", run_link(run.pk), run_link(run_id))

        if not self.has_rerun_permission(request):
            raise PermissionDenied
        return require_POST(self._act_on_one)(request, run_id, api.rerun, say)

    def rerun_with_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """A form prefilled with the run's kwargs, validated against the handler."""
        if not self.has_rerun_permission(request):
            raise PermissionDenied
        old = self._run_or_404(run_id)
        if old.task_name not in registry or old.kind == "django" or old.status not in TERMINAL:
            self.message_user(request, f"Run #{run_id} cannot be rerun with changed arguments "
                              f"(it is {old.get_status_display().lower()}"
                              f"{'' if old.task_name in registry else ', its task is not in code'}).",
                              messages.ERROR)
            return HttpResponseRedirect(run_url(run_id))
        spec = registry.get(old.task_name)
        form = ArgumentsForm(spec, request.POST if request.method == "POST" else None,
                             initial_kwargs=old.kwargs)
        if request.method == "POST" and form.is_valid():
            try:
                run = api.rerun(old, args=old.args, kwargs=form.kwargs)
            except ACTION_ERRORS as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, format_html(
                    "Started {}, a rerun of {} with changed arguments.", run_link(run.pk),
                    run_link(old.pk)), messages.SUCCESS)
                return HttpResponseRedirect(run_url(run.pk))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Rerun {old.task_name} #{old.pk} with changed arguments",
            "opts": self.model._meta,
            "run": old,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/django_tasks_live/run/rerun_with.html", context)


def _refusal(exc: BaseException) -> str:
    """An error in words: "it is completed; only runs that have not finished can be canceled"."""
    from ..states import IllegalTransition

    if isinstance(exc, IllegalTransition):
        return (f"not canceled: it is already {exc.current.replace('_', ' ')}, and only a run "
                "that has not finished can be canceled.")
    return str(exc)
