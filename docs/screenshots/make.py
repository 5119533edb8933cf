"""Screenshots of the admin console from the running demo, in headless Chromium.

    .venv/bin/python docs/screenshots/make.py [output-dir]

Starts the demo (its own SQLite file in a temp dir, embedded worker) with daphne on a
free 127.0.0.1 port, starts a few runs, and saves PNGs of the runs changelist (live),
a running run's page, a retried run's page, the bulk confirmation, the Start form and
the Tasks list, the dashboard (light and dark). README images come from here, so they stay current.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daphne exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit("daphne did not start")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="tl-shots-"))
    env = {**os.environ, "DEMO_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([python, "manage.py", "demo_user"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    port = free_port()
    daphne = subprocess.Popen([str(Path(python).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
                               "example_project.asgi:application"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, daphne)
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        import django_tasks_live as tasks_live

        for rows in (40, 60):
            tasks_live.using(labels={"tenant": "acme"}).start("demo.import", rows=rows, delay=0.05)
        tasks_live.start("demo.flaky", fail_times=1)
        long = tasks_live.start("demo.long", seconds=600)
        importing = tasks_live.using(labels={"tenant": "<b>globex</b>"}).start(
            "demo.import", rows=2000, delay=0.05)
        for _ in range(6):
            tasks_live.using(delay=3600).start("demo.import")
        base = f"http://127.0.0.1:{port}"
        shoot(base, out, importing.pk, long.pk)
    finally:
        daphne.terminate()
        daphne.wait(10)


def shoot(base: str, out: Path, running_id: int, long_id: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/admin/login/?next=/admin/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
        time.sleep(4)  # let the worker move the runs along
        runs = f"{base}/admin/django_tasks_live/run/"
        page.goto(runs)
        page.wait_for_selector('[data-tl-indicator="live"]', timeout=15000)
        time.sleep(2)
        page.screenshot(path=str(out / "runs.png"), full_page=True)
        page.goto(f"{runs}{running_id}/change/")
        page.wait_for_selector('[data-tl-indicator="live"]', timeout=15000)
        time.sleep(1.5)
        page.screenshot(path=str(out / "run-page.png"), full_page=True)
        flaky = page.evaluate("""async (runs) => {
            const r = await fetch(runs + '?task=demo.flaky'); const t = await r.text();
            const m = t.match(/name="_selected_action" value="(\\d+)"/); return m && m[1]; }""", runs)
        if flaky:
            page.goto(f"{runs}{flaky}/change/")
            page.screenshot(path=str(out / "run-page-retried.png"), full_page=True)
        page.goto(runs + "?status__exact=pending")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "cancel_runs")
        page.click("button[name=index]")
        page.wait_for_selector(".tl-confirm-box")
        page.screenshot(path=str(out / "bulk-confirm.png"), full_page=True)
        page.goto(f"{base}/admin/django_tasks_live/task/")
        page.screenshot(path=str(out / "tasks.png"), full_page=True)
        page.click("text=Start…")
        page.screenshot(path=str(out / "start-form.png"), full_page=True)
        page.goto(f"{base}/admin/django_tasks_live/schedule/add/")
        page.screenshot(path=str(out / "schedule-add.png"), full_page=True)
        page.goto(f"{runs}dashboard/")
        page.screenshot(path=str(out / "dashboard.png"), full_page=True)
        page.emulate_media(color_scheme="dark")
        page.goto(f"{runs}dashboard/")
        page.screenshot(path=str(out / "dashboard-dark.png"), full_page=True)
        page.goto(f"{runs}{long_id}/change/")
        time.sleep(1)
        page.screenshot(path=str(out / "run-page-dark.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
