"""A ``django.tasks`` backend: standard ``@task`` / ``.enqueue()`` code runs on this app's
workers and gets persisted runs, progress, retries and the live stream.

``TASKS = {"default": {"BACKEND": "django_tasks_live.backends.LiveTasksBackend"}}``
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from asgiref.sync import sync_to_async
from django.core import checks
from django.utils.module_loading import import_string

from . import store
from .arguments import validate
from .compat import (
    BaseTaskBackend,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from .compat import TaskContext as DjangoTaskContext
from .context import db_call
from .models import Run
from .registry import TaskSpec, UnknownTask
from .states import ACTIVE, DJANGO_STATUS, Status


class LiveTasksBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(self, task: Task, args: list[Any], kwargs: dict[str, Any]) -> TaskResult:
        self.validate_task(task)
        run = _create(task, args, kwargs, self.alias)
        result = to_result(run, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            run = store.get_run(int(result_id))
        except (Run.DoesNotExist, ValueError, TypeError):
            raise TaskResultDoesNotExist(result_id) from None
        if run.kind != "django":
            raise TaskResultDoesNotExist(result_id)
        return to_result(run)

    async def aget_result(self, result_id: str) -> TaskResult:
        return await sync_to_async(self.get_result, thread_sensitive=True)(result_id)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        from django.conf import settings

        errors = list(super().check(**kwargs))
        if "django_tasks_live" not in settings.INSTALLED_APPS:
            errors.append(
                checks.Error(
                    "LiveTasksBackend needs 'django_tasks_live' in INSTALLED_APPS.",
                    id="tasks_live.E010",
                )
            )
        return errors


def _create(task: Task, args: list[Any], kwargs: dict[str, Any], alias: str) -> Run:
    args, kwargs = validate(resolve_django_task(task.module_path), args, kwargs)
    new = store.NewRun(
        task_name=task.module_path,
        kind="django",
        backend=alias,
        args=args,
        kwargs=kwargs,
        queue=task.queue_name,
        priority=task.priority,
        run_after=task.run_after,
    )
    return store.create_runs([new])[0]


def rerun_django(old: Run) -> Run:
    task = _import_task(old.task_name)
    new = store.NewRun(task_name=old.task_name, kind="django", backend=old.backend,
                       args=old.args, kwargs=old.kwargs, queue=old.queue, priority=old.priority,
                       rerun_of_id=old.pk, owner_id=old.owner_id)
    run = store.create_runs([new])[0]
    task_enqueued.send(type(task.get_backend()), task_result=to_result(run, task))
    return run


def to_result(run: Run, task: Task | None = None) -> TaskResult:
    task = task or _import_task(run.task_name)
    errors = [
        TaskError(exception_class_path=_exception_path(e.get("type", "")), traceback=e.get("traceback", ""))
        for e in run.errors
    ]
    result = TaskResult(
        task=task,
        id=str(run.pk),
        status=TaskResultStatus[DJANGO_STATUS[Status(run.status)]],
        enqueued_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at if run.is_finished else None,
        last_attempted_at=run.started_at if run.attempt else None,
        args=run.args,
        kwargs=run.kwargs,
        backend=run.backend or task.backend,
        errors=errors,
        worker_ids=_worker_ids(run),
    )
    if run.status == Status.COMPLETED:
        object.__setattr__(result, "_return_value", run.result)
    return result


def _worker_ids(run: Run) -> list[str]:
    """One entry per attempt (django.tasks counts attempts this way): the finished
    attempts' workers, plus the current worker while an attempt is in flight."""
    ids = list(run.worker_ids)
    if run.status in ACTIVE and run.worker_id:
        ids.append(run.worker_id)
    return ids


def _exception_path(path: str) -> str:
    # WorkerLost and other synthetic errors have no importable class.
    return path if "." in path else "builtins.Exception"


def _may_import(module: str) -> bool:
    """Is ``module`` project code a run may make a worker import?

    A run row names its function by dotted path; a row written straight into the
    database must not make a worker import an arbitrary module (imports run code).
    Allowed: modules already imported, and modules inside an installed app or
    ``TASK_MODULES``, where the project's ``@task`` functions live.
    """
    import sys

    from django.apps import apps

    from . import conf

    if module in sys.modules:
        return True
    roots = [config.name for config in apps.get_app_configs()] + list(conf.get("TASK_MODULES"))
    return any(module == root or module.startswith(root + ".") for root in roots)


@functools.lru_cache(maxsize=512)
def _import_task(module_path: str) -> Task:
    module = module_path.rpartition(".")[0] if isinstance(module_path, str) else ""
    if not module or not _may_import(module):
        raise UnknownTask(f"Unknown django task {module_path!r}: not in an installed app's "
                          "modules or TASK_MODULES, so it is not imported.")
    try:
        obj = import_string(module_path)
    except ImportError as exc:
        raise UnknownTask(f"Unknown django task {module_path!r}: {exc}") from None
    except Exception as exc:  # the module failed at import: still this run's problem only
        raise UnknownTask(f"Django task {module_path!r} cannot be imported: {exc!r}") from None
    if not isinstance(obj, Task):  # only decorated tasks may be started: nothing else is called
        raise UnknownTask(f"{module_path!r} is not a django.tasks Task.")
    return obj


def resolve_django_task(module_path: str) -> TaskSpec:
    """A TaskSpec that calls the ``django.tasks`` function as the runner expects."""
    return _spec(_import_task(module_path))


@functools.lru_cache(maxsize=512)
def _spec(task: Task) -> TaskSpec:
    func = task.func

    def leading(ctx: Any) -> tuple[Any, ...]:
        if not task.takes_context:
            return ()
        run = db_call(lambda: store.get_run(ctx.run.id))
        return (DjangoTaskContext(task_result=to_result(run, task)),)

    if _is_async(func):
        async def call(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            return await func(*leading(ctx), *args, **kwargs)
    else:
        def call(ctx: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return func(*leading(ctx), *args, **kwargs)
    call.__signature__ = _signature_with_ctx(func, task.takes_context)  # type: ignore[attr-defined]
    call.__wrapped__ = func  # type: ignore[attr-defined]  # its annotations: arguments.validate
    return TaskSpec(name=task.module_path, func=call, queue=task.queue_name, priority=task.priority,
                    description=(inspect.getdoc(func) or "").split("\n\n")[0],
                    kind="django", backend=task.backend)


def register_django_tasks(modules: Iterable[ModuleType]) -> list[TaskSpec]:
    """Register the ``django.tasks`` Tasks defined in ``modules`` that run on this backend.

    Registered, they are first-class like ``@task`` handlers: the start endpoint and
    ``{% task_item %}`` start them, schedules fire them, the admin lists them. Only Tasks
    found in imported modules (``<app>.tasks``, ``TASK_MODULES``) are, never a name taken
    from a request, so nothing a visitor names gets imported.
    """
    from .registry import registry

    added = []
    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, Task) and _runs_here(value.backend):
                spec = _spec(value)
                registry.add(spec)
                added.append(spec)
    return added


def _runs_here(alias: str) -> bool:
    try:
        return isinstance(task_backends[alias], LiveTasksBackend)
    except Exception:  # an alias missing from TASKS, or a backend that fails to load
        return False


def _is_async(func: Any) -> bool:
    return inspect.iscoroutinefunction(func)


def _signature_with_ctx(func: Any, takes_context: bool) -> Any:
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if takes_context:
        params = params[1:]
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_ONLY)
    return sig.replace(parameters=[ctx, *params])


def send_signal(run: Run, which: str) -> None:
    """Send Django's ``task_enqueued`` / ``task_started`` / ``task_finished`` for a django run."""
    task = _import_task(run.task_name)
    backend = type(task_backends[run.backend or task.backend])
    signal = {"enqueued": task_enqueued, "started": task_started}.get(which, task_finished)
    signal.send(sender=backend, task_result=to_result(run, task))
