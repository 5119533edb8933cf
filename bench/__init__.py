"""Benchmarks of django-tasks-live's worker against peer task queues (not part of the package)."""
