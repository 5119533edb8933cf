"""Pause and resume from the admin in headless Chromium, against a real daphne and a
real worker: a paused queue's runs wait (shown as paused) while others run, Resume
starts them; the Tasks list's buttons pause a task; a user without the permissions
sees no buttons and a forged POST gets 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

import django_tasks_live as tasks_live
from django_tasks_live import pauses, store
from django_tasks_live.states import Status
from tests.browser import test_admin_console
from tests.browser.test_admin_console import open_admin
from tests.browser.test_live_page import CHROMIUM, orm
from tests.support.processes import wait_until
from tests.support.users import grant

# The fixtures: daphne on a free port and a real worker, a superuser's session, Chromium.
site, admin_session, browser = (test_admin_console.site, test_admin_console.admin_session,
                                test_admin_console.browser)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.acceptance,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent"),
]

RUNS = "/admin/django_tasks_live/run/"
TASKS = "/admin/django_tasks_live/task/"
QUEUES = "/admin/django_tasks_live/task/queues/"


def worker_said(tmp_path, text: str) -> bool:
    """The site fixture's worker (its first child) printed ``text``."""
    return text in (tmp_path / "child-0.log").read_text(errors="replace")


def status_of(run_id: int) -> str:
    return orm(store.statuses, [run_id])[run_id]


def test_pause_stops_claims_and_resume_restarts_them(site, admin_session, browser, tmp_path):
    _, port, start_daphne = site
    start_daphne()
    page = open_admin(browser, admin_session, port, QUEUES, live=False)
    page.click('tr[data-tl-queue="other"] button[data-tl-button="pause"]')
    page.locator("ul.messagelist").filter(has_text="Paused queue other").wait_for()
    wait_until(lambda: worker_said(tmp_path, "paused: queue other"), 30, "the worker learns it")

    held = orm(tasks_live.using(queue="other").start, "noop")
    free = orm(tasks_live.start, "noop")
    orm(tasks_live.wait, free.pk, timeout=30)
    assert status_of(held.pk) == Status.PENDING  # created first, still waiting

    runs = open_admin(browser, admin_session, port, RUNS)
    row = runs.locator(f'input.action-select[value="{held.pk}"] >> xpath=ancestor::tr')
    assert row.locator(".tl-paused").get_attribute("title") == "queue other is paused"
    runs.screenshot(path=str(tmp_path / "runs-paused.png"), full_page=True)
    page.screenshot(path=str(tmp_path / "queues-paused.png"), full_page=True)
    run_page = open_admin(browser, admin_session, port, f"{RUNS}{held.pk}/change/")
    assert "Waiting: queue other is paused" in run_page.locator("[data-tl-paused]").text_content()
    run_page.screenshot(path=str(tmp_path / "run-paused.png"), full_page=True)

    page.click('tr[data-tl-queue="other"] button[data-tl-button="resume"]')
    page.locator("ul.messagelist").filter(has_text="Resumed queue other").wait_for()
    row.locator('[data-tl-field=status]:text("Completed")').wait_for(timeout=30_000)  # live
    assert row.locator(".tl-paused").count() == 0  # the live row dropped its badge

    # The Tasks list's buttons (inside the changelist's form) pause and resume a task.
    tasks = open_admin(browser, admin_session, port, TASKS, live=False)
    tasks.click('button[name="pause"][value="task:echo"]')
    tasks.locator('button[name="resume"][value="task:echo"]').wait_for()
    assert orm(pauses.read).tasks == {"echo"}
    tasks.screenshot(path=str(tmp_path / "tasks-paused.png"), full_page=True)
    tasks.click('button[name="resume"][value="task:echo"]')
    tasks.locator('button[name="pause"][value="task:echo"]').wait_for()
    assert not orm(pauses.read)


@pytest.fixture
def viewer_session():
    def make():
        user = User.objects.create_user("viewer", password="pw", is_staff=True)
        return grant(user, "view_run", "view_task")

    client = Client()
    client.force_login(orm(make))
    return client.cookies["sessionid"].value


FORGED_POST = """async (url) => {
  const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken='));
  const body = new URLSearchParams({pause: 'queue:other',
                                    csrfmiddlewaretoken: token ? token.split('=')[1] : ''});
  const form = document.querySelector('input[name=csrfmiddlewaretoken]');
  if (form) body.set('csrfmiddlewaretoken', form.value);
  return (await fetch(url, {method: 'POST', body})).status;
}"""


def test_a_user_without_permissions_sees_no_buttons_and_gets_403(site, viewer_session, browser,
                                                                 tmp_path):
    _, port, start_daphne = site
    start_daphne()
    done = orm(tasks_live.start, "noop")
    orm(tasks_live.wait, done.pk, timeout=30)
    waiting = orm(tasks_live.using(delay=3600).start, "noop")
    for path in (f"{RUNS}{done.pk}/change/", f"{RUNS}{waiting.pk}/change/", TASKS, QUEUES, RUNS):
        page = open_admin(browser, viewer_session, port, path, live=False)
        assert page.locator("[data-tl-button]").count() == 0, path
        assert page.locator("select[name=action]").count() == 0, path
        assert page.get_by_text("Start…").count() == 0, path
    page.screenshot(path=str(tmp_path / "runs-read-only.png"), full_page=True)
    queues = open_admin(browser, viewer_session, port, QUEUES, live=False)
    queues.screenshot(path=str(tmp_path / "queues-read-only.png"), full_page=True)
    assert queues.evaluate(FORGED_POST, "/admin/django_tasks_live/task/pause/") == 403
    assert queues.evaluate(FORGED_POST.replace("pause: 'queue:other'", "action: 'cancel_runs', "
                                               f"_selected_action: '{waiting.pk}', index: '0'"),
                           RUNS) == 403
    assert not orm(pauses.read) and status_of(waiting.pk) == Status.PENDING
