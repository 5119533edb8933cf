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


@pytest.mark.django_db(transaction=True)
def test_its_worker_row_counts_the_runs_it_processed(monkeypatch):
    from tests.support.processes import wait_until

    monkeypatch.setattr(embedded, "_stop", threading.Event())
    thread = threading.Thread(target=embedded._loop, args=(2,), daemon=True)
    thread.start()
    try:
        runs = [tasks_live.start("add", a=i, b=1) for i in range(3)]
        for run in runs:
            tasks_live.wait(run, timeout=20)
        worker_id = tasks_live.wait(runs[0]).worker_ids[0]
        # The count lands with the next heartbeat (HEARTBEAT_INTERVAL is 0.5 s in tests).
        wait_until(lambda: Worker.objects.get(pk=worker_id).processed == 3, 10, "processed == 3")
    finally:
        embedded._stop.set()
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_embedded_worker_leaves_a_paused_queue_alone_until_it_is_resumed(monkeypatch):
    from django_tasks_live import pauses, store

    monkeypatch.setattr(embedded, "_stop", threading.Event())
    tasks_live.pause(queue="other")  # in the database before the worker looks
    thread = threading.Thread(target=embedded._loop, args=(2,), daemon=True)
    thread.start()
    try:
        held = tasks_live.using(queue="other").start("add", a=1, b=1)
        free = tasks_live.start("add", a=2, b=2)
        tasks_live.wait(free, timeout=20)  # claimed after held was created
        assert store.get_run(held.pk).status == Status.PENDING
        tasks_live.resume(queue="other")
        assert tasks_live.wait(held, timeout=20).result == 2
    finally:
        embedded._stop.set()
        thread.join(10)
        pauses.forget()


@pytest.mark.parametrize("argv,environ,serving", [
    (["/venv/bin/daphne", "mysite.asgi:application"], {}, True),
    (["/usr/lib/python3/site-packages/daphne/__main__.py", "-p", "8000", "m.asgi:app"], {}, True),
    (["/venv/bin/uvicorn", "mysite.asgi:application"], {}, True),
    (["manage.py", "runserver"], {"RUN_MAIN": "true"}, True),  # the autoreloader's child
    (["manage.py", "runserver", "--noreload"], {}, True),
    (["manage.py", "runserver"], {}, False),  # the autoreloader's parent only watches files
    (["manage.py", "migrate"], {}, False),
    (["manage.py", "shell"], {}, False),
    (["manage.py", "tasks_worker"], {}, False),
    (["manage.py", "test"], {}, False),
    (["/venv/bin/pytest", "tests"], {}, False),
    ([], {}, False),
])
def test_serving_web_is_true_only_in_the_serving_process(argv, environ, serving):
    assert embedded.serving_web(argv, environ) is serving


def test_autostart_needs_the_setting_and_a_serving_process(monkeypatch, settings):
    started = []
    monkeypatch.setattr(embedded, "start", lambda concurrency: started.append(concurrency) or True)
    monkeypatch.setattr("sys.argv", ["/venv/bin/daphne", "mysite.asgi:application"])
    settings.TASKS_LIVE = {}
    assert embedded.autostart() is False
    settings.TASKS_LIVE = {"EMBEDDED_WORKER": True}
    assert embedded.autostart() is True and started == [embedded.CONCURRENCY]
    monkeypatch.setattr("sys.argv", ["manage.py", "migrate"])
    assert embedded.autostart() is False and started == [embedded.CONCURRENCY]
