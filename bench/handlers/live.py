"""django-tasks-live's no-op."""

from bench.mark import mark
from django_tasks_live import limits, task


@task("bench-noop")
def noop(ctx, tag: int = 0) -> int:
    mark(tag)
    return 1


# bench/limits.py: the same no-op under a per-key cap (1,000 distinct keys) and a hot key.
@task("bench-keyed", limits=[limits.Concurrency(1, key="{key}")])
def keyed(ctx, tag: int = 0, key: str = "") -> int:
    mark(tag)
    return 1


@task("bench-hot", limits=[limits.Concurrency(4, key="{key}")])
def hot(ctx, tag: int = 0, key: str = "") -> int:
    mark(tag)
    return 1
