"""The demo site as ``./dev demo`` serves it: migrate, demo_user, daphne with the
embedded worker, then a logged-in user starts a task and sees it finish."""

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support.processes import ROOT, Child, daphne_args, free_port, wait_until

pytestmark = pytest.mark.acceptance


def demo_env(var_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKS_LIVE_")}
    env.update(DJANGO_SETTINGS_MODULE="example_project.settings", DEMO_VAR_DIR=str(var_dir),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def log_in(client: httpx.Client) -> None:
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post("/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": token, "username": "admin", "password": "admin",
        "next": "/admin/"})
    assert response.status_code == 302 and response.headers["location"] == "/admin/"


def test_demo_serves_pages_and_runs_tasks_in_process(tmp_path):
    env = demo_env(tmp_path / "var")
    manage(env, "migrate", "--noinput", "-v0")
    assert "Created superuser 'admin'" in manage(env, "demo_user")
    assert "left unchanged" in manage(env, "demo_user")  # a second ./dev demo keeps it

    port = free_port()
    server = Child(daphne_args(port, "example_project.asgi:application"), env,
                   tmp_path / "daphne.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(base), 30, "the demo to answer")
        with httpx.Client(base_url=base, timeout=10) as client:
            anonymous = client.get("/")
            assert anonymous.status_code == 200 and "log in" in anonymous.text
            # Plain daphne with DEBUG: tasks_live_application() serves the static files.
            script = client.get("/static/django_tasks_live/tasks_live.js")
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
            log_in(client)
            home = client.get("/")
            assert home.status_code == 200, home.text[:2000]
            assert "demo.import" in home.text

            headers = {"X-CSRFToken": client.cookies["csrftoken"], "Referer": base + "/"}
            bad = client.post("/tasks/start/nope/", json={}, headers=headers)
            assert bad.status_code == 404 and "Unknown task 'nope'" in bad.text
            # The django.tasks function starts like the others (registered by its path).
            report = client.post("/tasks/start/example_project.demo.tasks.send_report/",
                                 json={"recipients": 2}, headers=headers)
            assert report.status_code == 201, report.text

            started = client.post("/tasks/start/demo.import/", json={"rows": 5, "delay": 0.01},
                                  headers=headers)
            assert started.status_code == 201, started.text
            run_id = started.json()["run"]["id"]

            def finished() -> bool:
                state = client.get(f"/tasks/runs/{run_id}/").json()["run"]
                return state["status"] == "completed"

            wait_until(finished, 30, f"run {run_id} to complete in the embedded worker")
            assert client.get("/admin/django_tasks_live/run/").status_code == 200

            # Stopping the server (Ctrl-C on ./dev demo) must not wait for a running handler.
            long_id = client.post("/tasks/start/demo.long/", json={}, headers=headers).json()[
                "run"]["id"]
            wait_until(lambda: client.get(f"/tasks/runs/{long_id}/").json()["run"]["status"]
                       == "running", 30, "the long run to start")
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=10) is not None
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/admin/login/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
