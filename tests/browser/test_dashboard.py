"""The dashboard in headless Chromium against daphne and a real worker: its numbers move
without a reload, from the server's shared snapshot."""

from __future__ import annotations

import pytest

import django_tasks_live as tasks_live
from tests.browser.test_admin_console import admin_session, browser, open_admin, site  # noqa: F401
from tests.browser.test_live_page import CHROMIUM, orm

pytestmark = [
    pytest.mark.browser,
    pytest.mark.acceptance,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent"),
]
DASHBOARD = "/admin/django_tasks_live/run/dashboard/"
COMPLETED = '[data-tl-count="completed"] .tl-count'


def test_dashboard_numbers_update_live(site, admin_session, browser, tmp_path):  # noqa: F811
    _, port, start_daphne = site
    start_daphne()
    page = open_admin(browser, admin_session, port, DASHBOARD, live=False)
    page.evaluate("window.notReloaded = true")
    assert page.locator(COMPLETED).text_content() == "0"
    assert page.locator("svg.tl-chart").count() == 2

    run = orm(tasks_live.start, "noop")
    orm(tasks_live.wait, run.pk, timeout=30)
    # The next refresh (every 5 s, one server read shared by all viewers) shows it.
    page.wait_for_function(f"document.querySelector('{COMPLETED}').textContent === '1'",
                           timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.locator('[data-tl-figure="finished-hour"]').text_content() == "1"
    assert "noop" in page.locator(".tl-task-figures").text_content()
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
