"""The admin console in headless Chromium, against a real daphne and a real worker.

Rows of the runs changelist patch in place from the stream (no reload), a checked box
survives the updates, new runs appear on the first page, counts move, the run page's
Cancel / Rerun / Rerun-with-arguments buttons work, and a `<script>` progress message
stays text in the live DOM.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.states import Status
from tests.browser import test_live_page
from tests.browser.test_live_page import CHROMIUM, CHROMIUM_ARGS, orm

site = test_live_page.site  # the fixture: daphne on a free port and a real worker

pytestmark = [
    pytest.mark.browser,
    pytest.mark.acceptance,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent"),
]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

RUNS = "/admin/django_tasks_live/run/"
# Every (percent, message) the row of run ID showed, recorded in the page as it happens.
RECORD_ROW = """(id) => {
  window.seen = [];
  const row = document.querySelector('input.action-select[value="' + id + '"]').closest('tr');
  new MutationObserver(() => window.seen.push(
      row.querySelector('[data-tl-field=percent]').textContent)).observe(
      row, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


@pytest.fixture
def admin_session():
    client = Client()
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    return client.cookies["sessionid"].value


@pytest.fixture
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_admin(browser, session: str, port: int, path: str, live: bool = True):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    base = f"http://127.0.0.1:{port}"
    context.add_cookies([{"name": "sessionid", "value": session, "url": base}])
    page = context.new_page()
    page.goto(base + path)
    if live:
        page.wait_for_selector('[data-tl-indicator="live"]', timeout=15_000)
    return page


def tab_count(page, status: str) -> str:
    return page.locator(f'[data-tl-tab="{status}"] .tl-count').text_content()


def test_rows_patch_live_and_a_checked_box_survives(site, admin_session, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    done = orm(tasks_live.start, "noop")
    orm(tasks_live.wait, done.pk, timeout=30)
    run = orm(tasks_live.using(delay=1).start, "import-data", rows=60, delay=0.05)
    page = open_admin(browser, admin_session, port, RUNS)
    page.evaluate(RECORD_ROW, run.pk)
    page.check(f'input.action-select[value="{done.pk}"]')  # the user is selecting a row
    page.select_option("select[name=action]", "cancel_runs")  # ...and picked an action
    row = page.locator(f'input.action-select[value="{run.pk}"] >> xpath=ancestor::tr')
    row.locator('[data-tl-field=status]:text("Completed")').wait_for(timeout=40_000)
    page.screenshot(path=str(tmp_path / "changelist-live.png"), full_page=True)
    seen = page.evaluate("window.seen")
    percents = [int(s.rstrip("%")) for s in seen if s.endswith("%")]
    assert any(0 < p < 100 for p in percents), seen  # it moved through values: live, no reload
    assert percents[-1] == 100
    assert page.is_checked(f'input.action-select[value="{done.pk}"]')
    assert page.locator("select[name=action]").input_value() == "cancel_runs"
    assert page.locator(".action-counter").text_content().startswith("1 of")
    assert row.locator("[data-tl-field=message]").text_content() == ""  # outcome, not "Importing"


def test_new_runs_appear_counts_move_and_script_stays_text(site, admin_session, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    orm(tasks_live.using(delay=3600).start, "noop")
    page = open_admin(browser, admin_session, port, RUNS)
    assert (tab_count(page, "all"), tab_count(page, "pending")) == ("1", "1")
    run = orm(tasks_live.start, "echo", payload="x")
    page.locator(f'tr[data-tl-new-row="{run.pk}"]').wait_for(timeout=20_000)
    page.wait_for_function("() => document.querySelector('[data-tl-tab=all] .tl-count').textContent === '2'",
                           timeout=20_000)
    # A handler's message with markup is text in the live DOM too.
    evil = orm(tasks_live.start, "say", message="<img src=x onerror=window.pwned=1>", seconds=30)
    message = page.locator(f'tr[data-tl-new-row="{evil.pk}"] [data-tl-field=message]')
    message.filter(has_text="<img").wait_for(timeout=20_000)
    assert page.locator(f'tr[data-tl-new-row="{evil.pk}"] img').count() == 0
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=str(tmp_path / "changelist-new-rows.png"), full_page=True)
    orm(tasks_live.cancel, evil.pk)


def test_new_runs_bar_when_a_box_is_checked(site, admin_session, browser):
    _, port, start_daphne = site
    start_daphne()
    first = orm(tasks_live.using(delay=3600).start, "noop")
    page = open_admin(browser, admin_session, port, RUNS)
    page.check(f'input.action-select[value="{first.pk}"]')
    orm(tasks_live.using(delay=3600).start, "noop")
    page.locator("[data-tl-new-runs]").wait_for(state="visible", timeout=20_000)
    assert page.locator("[data-tl-new-count]").text_content() == "1"
    assert page.locator("tr[data-tl-new-row]").count() == 0  # the table was left alone
    assert page.is_checked(f'input.action-select[value="{first.pk}"]')


def test_hidden_tab_pauses_the_stream(site, admin_session, browser):
    _, port, start_daphne = site
    start_daphne()
    page = open_admin(browser, admin_session, port, RUNS)
    page.evaluate("""() => {
      Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
      document.dispatchEvent(new Event('visibilitychange'));
    }""")
    assert page.locator("[data-tl-indicator]").get_attribute("data-tl-indicator") == "paused"
    assert page.evaluate("TasksLive.adminSource.closed") is True
    page.evaluate("""() => {
      Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
      document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_selector('[data-tl-indicator="live"]', timeout=15_000)


def test_run_page_cancel_rerun_and_rerun_with_arguments(site, admin_session, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    run = orm(tasks_live.start, "sleepy", seconds=60)
    page = open_admin(browser, admin_session, port, f"{RUNS}{run.pk}/change/")
    page.locator('[data-tl-field=status]:text("Running")').wait_for(timeout=20_000)
    page.screenshot(path=str(tmp_path / "run-page-running.png"), full_page=True)
    page.click("[data-tl-button=cancel]")
    page.locator(".messagelist").wait_for()
    # The page follows the run to its end (live) and reloads with the finished buttons.
    page.locator("[data-tl-button=rerun]").wait_for(timeout=30_000)
    assert orm(store.get_run, run.pk).status == Status.CANCELED

    page.click("[data-tl-button=rerun]")
    page.wait_for_url(lambda url: f"/{run.pk}/change/" not in url, timeout=10_000)
    rerun = orm(lambda: store.runs().filter(rerun_of=run.pk).get())
    assert f"/{rerun.pk}/change/" in page.url
    orm(tasks_live.cancel, rerun.pk)

    page.goto(f"http://127.0.0.1:{port}{RUNS}{run.pk}/rerun-with/")
    assert page.input_value("#id_seconds") == "60"  # prefilled with the run's kwargs
    page.fill("#id_seconds", "0.1")
    page.uncheck("#id_cooperative")
    page.click("input[type=submit]")
    page.wait_for_url(lambda url: "/rerun-with/" not in url, timeout=20_000)
    changed = orm(lambda: store.runs().filter(rerun_of=run.pk).order_by("-id").first())
    assert changed.kwargs == {"seconds": 0.1, "cooperative": False}
    assert f"/{changed.pk}/change/" in page.url
    # Live: the page follows the short rerun to its end, then reloads (300 ms later) with
    # the finished run's buttons; the screenshot waits for that page (one taken during the
    # reload fails: "Unable to capture screenshot").
    page.locator('[data-tl-field=status]:text("Completed")').wait_for(timeout=30_000)
    page.locator("[data-tl-button=rerun]").wait_for(timeout=10_000)
    page.wait_for_load_state("load")
    assert page.locator("[data-tl-button=cancel]").count() == 0
    page.screenshot(path=str(tmp_path / "run-page-rerun.png"), full_page=True)


# An @task handler, and a django.tasks function (issue 9: started from the admin alike).
@pytest.mark.parametrize("name,kind", [("add", "live"),
                                       ("tests.testapp.tasks.django_add", "django")])
def test_start_form_rejects_bad_arguments_then_starts(site, admin_session, browser, tmp_path,
                                                      name, kind):
    from django_tasks_live.models import Task

    _, port, start_daphne = site
    start_daphne()
    page = open_admin(browser, admin_session, port, "/admin/django_tasks_live/task/", live=False)
    task = orm(Task.objects.get, name=name)
    page.goto(f"http://127.0.0.1:{port}/admin/django_tasks_live/task/{task.pk}/start/")
    page.fill("#id_b", "2")  # a left empty: required
    page.click("input[type=submit]")
    page.locator(".errorlist").first.wait_for()
    assert "This field is required" in page.locator(".errorlist").first.text_content()
    assert orm(lambda: store.runs().count()) == 0
    page.screenshot(path=str(tmp_path / "start-form-error.png"), full_page=True)
    page.fill("#id_a", "40")
    page.click("input[type=submit]")
    page.locator('[data-tl-field=status]:text("Completed")').wait_for(timeout=30_000)
    run = orm(lambda: store.runs().get())
    assert (run.task_name, run.kind, run.kwargs, run.result) == (name, kind, {"a": 40, "b": 2}, 42)
