"""Bad input against the real servers (issue 13 points 12, 14, 15, 16): a daphne serving
the endpoints and the stream, a ``tasks_worker``, the ``tasks_prune`` command. Each
answers with a clear refusal; nothing is lost, run or imported."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.utils import timezone

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Run, Schedule
from django_tasks_live.states import Status
from tests.acceptance.test_stream import session_cookie, start_daphne
from tests.support.processes import ROOT, child_env, children, worker_args
from tests.support.sse import StreamReader
from tests.support.users import operator

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]
CSRF = "a" * 32  # Django accepts an unmasked secret as the token


def client_for(base: str, user=None) -> httpx.Client:
    cookies = {"csrftoken": CSRF, **(session_cookie(user) if user else {})}
    return httpx.Client(base_url=base, cookies=cookies, headers={"X-CSRFToken": CSRF}, timeout=30)


def test_the_endpoints_and_the_stream_refuse_bad_input_with_a_reason(tmp_path):
    user = operator()
    with children(tmp_path) as spawn:
        events_url = start_daphne(spawn)
        base = events_url.removesuffix("/tasks/events/")
        with client_for(base, user) as http:
            deep = '{"payload": ' + "[" * 990 + "]" * 990 + "}"
            answer = http.post("/tasks/start/echo/", content=deep,
                               headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and "nested" in answer.json()["error"]
            answer = http.post("/tasks/start/echo/", content='{"payload": "x\\ud800y"}',
                               headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and "surrogate" in answer.json()["error"]
            answer = http.get("/tasks/no/such/page/")
            assert answer.status_code == 404
            assert answer.headers["content-type"].startswith("application/json")

            # Racing cancels of one held run all answer 200: the first asks, the rest see it.
            run = tasks_live.start("sleepy", seconds=30)
            store.claim_run(run.pk, "somewhere")
            codes: list[int] = []

            def cancel() -> None:
                codes.append(http.post(f"/tasks/runs/{run.pk}/cancel/").status_code)

            threads = [threading.Thread(target=cancel) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert codes == [200] * 6
            assert store.get_run(run.pk).status == Status.CANCEL_REQUESTED

        with client_for(base) as anonymous:  # authorised before the task is looked up
            answer = anonymous.post("/tasks/start/no-such-task/",
                                    headers={"Accept": "application/json"})
            assert answer.status_code == 401 and answer.json()["error"] == "Log in to start tasks."
            assert "noop" not in answer.text and "echo" not in answer.text

        cookies = session_cookie(user)
        assert httpx.get(events_url + "?task=a%00b", cookies=cookies).status_code == 400
        with StreamReader(events_url, cookies=cookies,
                          headers={"Last-Event-ID": "9" * 15_000}) as reader:
            reader.wait_for(lambda ev: any(e.event == "reset" for e in ev), what="reset")
            reader.wait_for(lambda ev: any(e.event == "snapshot" for e in ev), what="snapshot")
            assert reader.status == 200


def test_a_worker_neither_fires_a_six_field_cron_nor_imports_a_stray_task_path(tmp_path):
    # Rows written straight into the database, past every form and API check.
    every_second = Schedule.objects.bulk_create([Schedule(
        name="every-second", task_name="noop", cron="* * * * * *", next_run_at=timezone.now())])[0]
    stray = store.create_runs([store.NewRun(task_name="tabnanny.check", kind="django")])[0]
    marker = tasks_live.start("noop", n=1)
    with children(tmp_path) as spawn:
        worker = spawn(worker_args())
        assert tasks_live.wait(marker, timeout=60).status == Status.COMPLETED
        stray_done = tasks_live.wait(stray, timeout=30)
        time.sleep(2.5)  # two schedule ticks
        assert worker.proc.poll() is None, worker.output()
    assert (stray_done.status, stray_done.error_type) == (Status.FAILED, "UnknownTask")
    assert "not imported" in stray_done.error
    assert not Run.objects.filter(schedule=every_second).exists()


@pytest.mark.parametrize("option", ["--keep-last=" + "9" * 30, "--days=" + "9" * 30,
                                    "--batch-size=" + "9" * 30])
def test_tasks_prune_refuses_out_of_range_options_with_a_command_error(option):
    done = subprocess.run([sys.executable, "manage.py", "tasks_prune", "--dry-run", option],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CommandError" in done.stderr and "Traceback" not in done.stderr
