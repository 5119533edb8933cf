"""The embedded worker: threads in the web process (development and the demo)."""

import threading

import pytest

import django_tasks_live as tasks_live
from django_tasks_live.models import Worker
from django_tasks_live.states import Status
from django_tasks_live.worker import embedded


@pytest.mark.django_db(transaction=True)
def test_embedded_worker_registers_itself_then_runs_runs(monkeypatch):
    monkeypatch.setattr(embedded, "_stop", threading.Event())
    thread = threading.Thread(target=embedded._loop, args=(2,), daemon=True)
    thread.start()
    try:
        run = tasks_live.start("add", a=2, b=3)
        done = tasks_live.wait(run, timeout=20)
    finally:
        embedded._stop.set()
        thread.join(10)
    assert done.status == Status.COMPLETED and done.result == 5
    # Its Worker row exists (else recovery would take its running runs for lost ones).
    assert Worker.objects.filter(pk=done.worker_ids[0]).exists()
