"""django-tasks-live's no-op."""

from bench.mark import mark
from django_tasks_live import task


@task("bench-noop")
def noop(ctx, tag: int = 0) -> int:
    mark(tag)
    return 1
