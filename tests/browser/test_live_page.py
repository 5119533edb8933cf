"""A real page in headless Chromium, served by a real daphne, with a real worker process.

The page (``tests/templates/tasks_live_test/live_page.html``) only uses the template tags
and ``tasks_live.js`` in declarative mode: no test code runs in the page.
"""

from __future__ import annotations

import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.models import Schedule
from django_tasks_live.registry import registry
from django_tasks_live.states import Status
from tests.support.processes import children, daphne_args, free_port, wait_until, worker_args
from tests.support.users import operator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.acceptance,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"),
]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

# Every percent the bar showed, recorded in the page as it happens.
RECORD_WIDTHS = """() => {
  window.widths = [];
  new MutationObserver(() => {
    const bar = document.querySelector('#item [data-tasks-live-bar]');
    if (bar) window.widths.push(parseFloat(bar.style.width));
  }).observe(document.querySelector('#item'), {attributes: true, subtree: true});
}"""


def orm(fn, *args, **kwargs):
    """Call the ORM from a thread: Playwright's sync API runs an event loop in this one."""
    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def site(tmp_path):
    """``spawn``, the port and a ``start_daphne()`` that (re)starts daphne on that port."""
    port = free_port()
    # The test app's code schedules (every-minute), synced and disabled as in the admin
    # (the worker's sync leaves that alone): a run one fired in the middle of a test
    # changed the counts and run lists the browser tests read.
    orm(store.sync_code_schedules, registry)
    orm(lambda: Schedule.objects.filter(from_code=True).update(enabled=False))
    with children(tmp_path) as spawn:
        def start_daphne():
            daphne = spawn(daphne_args(port))
            wait_until(lambda: listening(port) or daphne.proc.poll() is not None, 30, "daphne")
            assert daphne.proc.poll() is None, daphne.output()
            return daphne

        worker = spawn(worker_args("--concurrency", "1"))
        worker.wait_for_output("tasks_worker ready", 30)
        yield spawn, port, start_daphne


@pytest.fixture
def session_id():
    """A logged-in staff session (the stream shows anonymous users nothing)."""
    client = Client()
    client.force_login(operator())
    return client.cookies["sessionid"].value


@pytest.fixture
def browser(session_id):
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, session_id: str, port: int, path: str):
    """``path`` as a logged-in staff user, recording the widths of the #item bar if any."""
    context = browser.new_context(viewport={"width": 900, "height": 700})
    base = f"http://127.0.0.1:{port}"
    context.add_cookies([{"name": "sessionid", "value": session_id,
                          "url": base}])
    page = context.new_page()
    page.goto(base + path)
    if page.locator("#item").count():
        page.evaluate(RECORD_WIDTHS)
    page.wait_for_selector("[data-tasks-live-stream].tasks-live--connected", timeout=15_000)
    return page


def item_state(page) -> dict:
    return page.evaluate("""() => {
      const item = document.querySelector('#item .tasks-live-item');
      return {status: item.dataset.status, runId: item.dataset.runId,
              width: item.querySelector('[data-tasks-live-bar]').style.width,
              percent: item.querySelector('[data-tasks-live-percent]').textContent,
              label: item.querySelector('[data-tasks-live-status]').textContent,
              result: item.querySelector('[data-tasks-live-result]').textContent};
    }""")


def test_progress_bar_moves_to_100_percent_live(site, session_id, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    page = open_page(browser, session_id, port, "/live/import-data/")
    assert item_state(page)["status"] == "idle"

    # The Start button POSTs (with the CSRF token) to the start endpoint; the worker runs it.
    page.click("#start-slow")
    page.wait_for_selector("#item .tasks-live--completed", timeout=30_000)
    page.screenshot(path=str(tmp_path / "completed.png"), full_page=True)

    state = item_state(page)
    run = orm(store.get_run, int(state["runId"]))
    assert run.status == Status.COMPLETED and run.task_name == "import-data"
    assert (state["width"], state["percent"], state["label"]) == ("100%", "100%", "Completed")
    assert state["result"] == "imported: 40"  # readable, not raw JSON
    widths = page.evaluate("window.widths")
    # The bar moved through intermediate values before 100%: it was live, not a reload.
    assert any(0 < width < 100 for width in widths), widths
    assert widths == sorted(widths) and widths[-1] == 100
    # The new run also appeared in the list below, from the list's <template>.
    assert page.locator(f'#list [data-tasks-live-run="{run.pk}"].tasks-live--completed').count() == 1


def test_page_recovers_after_daphne_restarts_mid_run(site, session_id, browser, tmp_path):
    _, port, start_daphne = site
    daphne = start_daphne()
    page = open_page(browser, session_id, port, "/live/import-data/")
    stream_urls: list[str] = []
    page.on("request", lambda request: stream_urls.append(request.url)
            if "/tasks/events/" in request.url else None)

    run = orm(tasks_live.start, "import-data", rows=40, delay=0.05)
    page.wait_for_function(
        "() => parseFloat(document.querySelector('#item [data-tasks-live-bar]').style.width) > 0",
        timeout=30_000)

    os.kill(daphne.pid, signal.SIGKILL)  # a crash, mid-run, with the stream open
    page.wait_for_selector("#live.tasks-live--disconnected", timeout=10_000)
    page.screenshot(path=str(tmp_path / "disconnected.png"), full_page=True)
    # The run finishes while nobody serves the page: only the replay can tell it.
    assert orm(tasks_live.wait, run.pk, timeout=30).status == Status.COMPLETED
    assert item_state(page)["status"] == "running"

    start_daphne()
    page.wait_for_selector("#item .tasks-live--completed", timeout=20_000)
    page.wait_for_selector("#live.tasks-live--connected", timeout=10_000)
    page.screenshot(path=str(tmp_path / "recovered.png"), full_page=True)

    state = item_state(page)
    assert state["runId"] == str(run.pk)
    assert (state["width"], state["percent"], state["label"]) == ("100%", "100%", "Completed")
    # The reconnect asked for the events after the last one the page had seen.
    assert stream_urls and all("last_event_id=" in url for url in stream_urls), stream_urls
    assert page.evaluate("TasksLive.sources[0].reconnects") >= 1


def test_status_page_cancel_button_and_runs_leaving_the_status(site, session_id, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    page = open_page(browser, session_id, port, "/tasks/runs/?status=running")
    assert page.locator("[data-tasks-live-empty]").is_visible()

    run = orm(tasks_live.start, "sleepy", seconds=60)
    item = page.locator(f'[data-tasks-live-run="{run.pk}"]')
    # The run appears once a worker claims it (cloned from the list's <template>).
    item.locator("[data-tasks-live-action=cancel]:visible").wait_for(timeout=20_000)
    assert not page.locator("[data-tasks-live-empty]").is_visible()
    page.screenshot(path=str(tmp_path / "running-page.png"), full_page=True)

    item.locator("[data-tasks-live-action=cancel]").click()
    item.wait_for(state="detached", timeout=20_000)  # no longer running: it leaves the page
    assert orm(tasks_live.wait, run.pk, timeout=30).status == Status.CANCELED
    assert page.locator("[data-tasks-live-empty]").is_visible()


def test_a_django_task_with_required_arguments_starts_from_its_form(site, session_id, browser,
                                                                     tmp_path):
    # {% task_item "tests.testapp.tasks.django_add" %}: a @django.tasks.task function, by its
    # path; it needs a and b, so the card renders a form built from its signature.
    _, port, start_daphne = site
    start_daphne()
    page = open_page(browser, session_id, port, "/live/tests.testapp.tasks.django_add/")
    form = page.locator("#item form[data-tasks-live-form]")
    assert form.locator("input[name=a][type=number][required]").count() == 1
    page.screenshot(path=str(tmp_path / "django-task-form.png"), full_page=True)

    # Start with a field missing: the browser asks for it, nothing is posted.
    page.fill("#item input[name=a]", "2")
    page.click("#item [data-tasks-live-action=start]")
    page.wait_for_timeout(300)
    assert orm(lambda: store.runs(task=["tests.testapp.tasks.django_add"]).count()) == 0

    page.fill("#item input[name=b]", "40")
    page.click("#item [data-tasks-live-action=start]")
    page.wait_for_selector("#item .tasks-live--completed", timeout=30_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / "django-task-done.png"), full_page=True)
    state = item_state(page)
    run = orm(store.get_run, int(state["runId"]))
    assert (run.kind, run.kwargs, run.result) == ("django", {"a": 2, "b": 40}, 42)
    assert (state["percent"], state["result"]) == ("100%", "42")
