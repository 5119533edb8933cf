"""django-tasks-db's no-op: a plain ``django.tasks`` task."""

from django.tasks import task

from bench.mark import mark


@task
def noop(tag: int = 0) -> int:
    mark(tag)
    return 1
