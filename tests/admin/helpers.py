"""Shared by the admin tests: runs brought into a status through the lifecycle."""

from django.contrib.messages import get_messages
from django.utils.html import strip_tags

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run
from django_tasks_live.states import Status

RUNS = "/admin/django_tasks_live/run/"

# How to bring a fresh pending run into each status through the lifecycle.
PATHS = {
    Status.PENDING: [],
    Status.CLAIMED: [Status.CLAIMED],
    Status.RUNNING: [Status.RUNNING],
    Status.RETRYING: [Status.RUNNING, Status.RETRYING],
    Status.CANCEL_REQUESTED: [Status.RUNNING, Status.CANCEL_REQUESTED],
    Status.COMPLETED: [Status.RUNNING, Status.COMPLETED],
    Status.FAILED: [Status.RUNNING, Status.FAILED],
    Status.CANCELED: [Status.CANCELED],
    Status.TIMED_OUT: [Status.RUNNING, Status.TIMED_OUT],
    Status.SKIPPED: [Status.RUNNING, Status.SKIPPED],
}


def make_run(status: Status, task: str = "noop", labels: dict | None = None, **kwargs) -> Run:
    run = tasks_live.using(labels=labels or {}).start(task, **kwargs)
    for step in PATHS.get(status, [status]):
        if step == Status.CLAIMED:  # claimed ahead by a worker's executor
            run = store.claim_run(run.pk, "worker-1", begin=False)
        elif step == Status.RUNNING:  # as a worker does: the claim counts the attempt
            run = store.claim_run(run.pk, "worker-1")
        else:
            run = store.transition(run.pk, step)
    return run


def messages_of(response) -> list[str]:
    """The messages as a reader sees them (links reduced to their text)."""
    return [strip_tags(str(m)) for m in get_messages(response.wsgi_request)]


def listed(response) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [run.pk for run in response.context["cl"].result_list]


def run_page(run_id: int) -> str:
    return f"{RUNS}{run_id}/change/"
