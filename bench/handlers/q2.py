"""django-q2's no-op: any importable function."""

from bench.mark import mark


def noop(tag: int = 0) -> int:
    mark(tag)
    return 1
