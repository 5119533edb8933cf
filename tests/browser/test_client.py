"""``tasks_live.js`` against scripted streams, in headless Chromium.

Playwright answers every request of the page itself (no server): each test scripts the
stream responses, so protocol corner cases (late progress, reset, reconnect with the
last event id, giving up) are exercised exactly. The real-server tests are in
``test_live_page.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCRIPT = (Path(__file__).resolve().parents[2]
          / "django_tasks_live/static/django_tasks_live/tasks_live.js").read_text()
ORIGIN = "http://tasks.test"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"),
]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script id="tasks-live-config" type="application/json">{config}</script>
<script src="/tasks_live.js"></script></head>
<body><main id="live" data-tasks-live-stream="/events/?task=import">
  <span id="connection" data-tasks-live-connection></span>
  <p id="denied" data-tasks-live-denied hidden><a data-tasks-live-login href="">Log in</a></p>
  <div id="item" data-tasks-live-task="import" data-status="idle" class="tasks-live--idle">
    <span data-tasks-live-status></span>
    <div data-tasks-live-bar></div><span data-tasks-live-percent></span>
    <span data-tasks-live-message></span><time data-tasks-live-when></time>
    <pre data-tasks-live-result></pre><ol data-tasks-live-steps></ol>
    <button data-tasks-live-action="cancel" data-tasks-live-show="pending,running">Cancel</button>
    <span data-tasks-live-feedback></span>
  </div>
</main></body></html>"""


def state(run_id, status="running", percent=None, message="", task="import", labels=None,
          **extra):
    return {"id": run_id, "task": task, "status": status, "attempt": 1, "max_attempts": 1,
            "progress": {"current": None, "total": None, "percent": percent, "message": message},
            "steps": [], "labels": labels or {}, **extra}


def event(name, data, event_id=None):
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n"


class Server:
    """Answers the page's requests; ``streams`` are the bodies of successive stream requests.

    Each body is sent whole and the response ends, so the client sees a disconnect after
    every body and must reconnect; a ``None`` body answers 503, a ``(status, text)`` pair
    answers that status with that text. POSTs get ``post_answer`` (status, JSON).
    """

    def __init__(self, streams, config=None, page=PAGE, post_answer=None):
        self.page = page
        self.streams = list(streams)
        self.post_answer = post_answer or (409, {"error": "Run 7 is completed and cannot be canceled."})
        self.stream_urls: list[str] = []
        self.posts: list[tuple[str, dict, str]] = []
        self.config = {"initialDelay": 20, "maxDelay": 50, "labels": {"running": "Running"},
                       "urls": {"cancel": "/runs/{id}/cancel/"}, "csrfToken": "tok",
                       **(config or {})}

    def handle(self, route):
        request = route.request
        path = request.url[len(ORIGIN):]
        if path == "/":
            route.fulfill(body=self.page.format(config=json.dumps(self.config)),
                          content_type="text/html")
        elif path == "/tasks_live.js":
            route.fulfill(body=SCRIPT, content_type="application/javascript")
        elif path.startswith("/events/"):
            self.stream_urls.append(path)
            body = self.streams.pop(0) if self.streams else None
            if body is None:
                route.fulfill(status=503, body="down")
            elif isinstance(body, tuple):
                route.fulfill(status=body[0], body=body[1], content_type="text/plain")
            else:
                route.fulfill(body=body, content_type="text/event-stream")
        elif request.method == "POST":
            self.posts.append((path, request.headers, request.post_data or ""))
            status, answer = self.post_answer
            route.fulfill(status=status, body=json.dumps(answer), content_type="application/json")
        else:
            route.fulfill(status=404, body="")

    def wait_for_streams(self, page, count: int, timeout: float = 5.0) -> list[str]:
        """Let the page run until it has made ``count`` stream requests.

        The client counts a reconnect when it schedules one; the request itself reaches
        the route handler a little later, and only while Playwright is being driven.
        """
        deadline = time.monotonic() + timeout
        while len(self.stream_urls) < count:
            assert time.monotonic() < deadline, f"only {self.stream_urls} requested"
            page.wait_for_timeout(10)
        return self.stream_urls


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """Open the page in a fresh context whose every request ``server`` answers."""
    contexts = []

    def open_page(server):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.route(f"{ORIGIN}/**", server.handle)
        page.goto(f"{ORIGIN}/")
        return page

    yield open_page
    for context in contexts:
        context.close()


def item(page):
    return page.evaluate("""() => {
      const el = document.getElementById('item');
      const q = (s) => el.querySelector(s);
      return {status: el.dataset.status, cls: el.className, width: q('[data-tasks-live-bar]').style.width,
              percent: q('[data-tasks-live-percent]').textContent,
              message: q('[data-tasks-live-message]').textContent,
              label: q('[data-tasks-live-status]').textContent,
              cancelHidden: q('[data-tasks-live-action=cancel]').hidden,
              feedback: q('[data-tasks-live-feedback]').textContent,
              images: el.querySelectorAll('img').length};
    }""")


def test_snapshot_run_and_progress_events_update_the_page(open_page):
    server = Server([
        event("snapshot", {"runs": [state(7, percent=10.0)], "last_event_id": 40}, 40)
        + event("progress", {"run": state(7, percent=55.5, message="half")})
        + event("run", {"kind": "status", "run": state(7, "completed", 100.0, "done")}, 41)
        # A progress push that arrives after the terminal event never drags the run back.
        + event("progress", {"run": state(7, percent=60.0, message="late")}),
    ])
    page = open_page(server)
    page.wait_for_function("document.getElementById('item').dataset.status === 'completed'")
    shown = item(page)
    assert shown["width"] == "100%" and shown["percent"] == "100%" and shown["message"] == "done"
    assert "tasks-live--completed" in shown["cls"] and "tasks-live--idle" not in shown["cls"]
    assert shown["cancelHidden"] is True
    # The reconnect (the scripted body ended) asks for events after id 41.
    urls = server.wait_for_streams(page, 2)
    assert urls[:2] == ["/events/?task=import", "/events/?task=import&last_event_id=41"]


def test_text_is_never_markup(open_page):
    html = '<img src=x onerror="window.pwned=1">'
    server = Server([event("snapshot", {"runs": [state(7, percent=12.0, message=html)],
                                        "last_event_id": 1}, 1)])
    page = open_page(server)
    page.wait_for_function("document.getElementById('item').dataset.status === 'running'")
    shown = item(page)
    assert shown["message"] == html and shown["images"] == 0
    assert page.evaluate("window.pwned") is None


def test_subscribe_sees_runs_and_connection_and_unsubscribes(open_page):
    snapshot = event("snapshot", {"runs": [state(1), state(2, "pending")], "last_event_id": 5}, 5)
    server = Server([snapshot, snapshot], config={"maxRetries": 0})  # the page's own, then ours
    page = open_page(server)
    page.evaluate("""() => {
      window.seen = [];
      const live = new TasksLive.EventSource('/events/');
      const stop = live.subscribe((runs, connected) => {
        window.seen.push([Array.from(runs.keys()), connected]);
        if (runs.size === 2) { stop(); live.close(); }
      });
    }""")
    page.wait_for_function("window.seen.some(([ids]) => ids.length === 2)", timeout=5000)
    calls = page.evaluate("window.seen")
    assert calls[0] == [[], False]  # called at once with the current (empty) state
    assert calls[-1] == [[1, 2], True]  # nothing after unsubscribing, though close() notifies


def test_reset_forgets_runs_then_the_snapshot_rebuilds(open_page):
    server = Server([
        event("snapshot", {"runs": [state(3)], "last_event_id": 9}, 9),
        event("reset", {"reason": "Event 9 is older than the retained events."})
        + event("snapshot", {"runs": [state(4, "completed", 100.0)], "last_event_id": 20}, 20),
    ])
    page = open_page(server)
    page.wait_for_function("window.TasksLive.sources[0].runs.has(4)")
    assert page.evaluate("Array.from(window.TasksLive.sources[0].runs.keys())") == [4]
    assert page.evaluate("window.TasksLive.sources[0].lastEventId") == 20
    assert item(page)["status"] == "completed"  # the task item follows the newest run


@pytest.mark.parametrize("body", [None, ""], ids=["refused", "accepted-then-dropped"])
def test_backoff_gives_up_after_max_retries(open_page, body):
    # An accepted stream that ends before any event does not reset the backoff either.
    server = Server([body] * 4, config={"maxRetries": 2})
    page = open_page(server)
    page.wait_for_function("window.TasksLive.sources[0].closed === true", timeout=5000)
    # The first try, two retries, and for "refused" one fetch asking why (a 503: retry).
    assert len(server.stream_urls) == (4 if body is None else 3)
    assert page.evaluate("document.getElementById('live').className") == "tasks-live--disconnected"


def test_action_buttons_post_with_csrf_and_show_errors(open_page):
    server = Server([event("snapshot", {"runs": [state(7)], "last_event_id": 1}, 1)])
    page = open_page(server)
    page.wait_for_function("!document.querySelector('[data-tasks-live-action=cancel]').hidden")
    page.click("[data-tasks-live-action=cancel]")
    page.wait_for_function("document.querySelector('[data-tasks-live-feedback]').textContent !== ''")
    path, headers, body = server.posts[0]
    assert path == "/runs/7/cancel/" and headers["x-csrftoken"] == "tok" and body == "{}"
    assert item(page)["feedback"] == "Run 7 is completed and cannot be canceled."


LABEL_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script id="tasks-live-config" type="application/json">{config}</script>
<script src="/tasks_live.js"></script></head>
<body><main id="live" data-tasks-live-stream="/events/">
  <div id="item" data-tasks-live-task="import" data-tasks-live-label="tenant:acme" data-status="idle">
    <span data-tasks-live-id></span></div>
  <div id="list" data-tasks-live-list data-tasks-live-list-label="tenant:acme,region:eu">
    <div data-tasks-live-items></div>
    <template data-tasks-live-template><div><span data-tasks-live-id></span></div></template>
  </div>
</main></body></html>"""


def test_label_filters_of_items_and_lists_apply_to_runs_that_appear_later(open_page):
    acme_eu, acme_us, globex = ({"tenant": "acme", "region": "eu"},
                                {"tenant": "acme", "region": "us"}, {"tenant": "globex"})
    server = Server([
        event("snapshot", {"runs": [state(1, labels=acme_eu)], "last_event_id": 1}, 1)
        + event("run", {"kind": "created", "run": state(2, "pending", labels=acme_us)}, 2)
        + event("run", {"kind": "created", "run": state(3, "pending", labels=globex)}, 3)
        + event("run", {"kind": "created", "run": state(4, "pending", labels=acme_eu)}, 4),
    ], page=LABEL_PAGE)
    page = open_page(server)
    page.wait_for_function("window.TasksLive.sources[0].runs.has(4)")
    shown = page.evaluate("""() => ({
      item: document.querySelector('#item [data-tasks-live-id]').textContent,
      list: Array.from(document.querySelectorAll('#list [data-tasks-live-run]'))
                 .map((el) => el.getAttribute('data-tasks-live-run')),
    })""")
    # The newest acme run (not globex's 3) and, in the list, acme's eu runs only.
    assert shown == {"item": "#4", "list": ["4", "1"]}


# ---------------------------------------------------------------- logged out


REFUSAL = "You may not watch these runs; log in first."


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_stream_stops_retrying_and_shows_the_login_state(open_page, status):
    server = Server([(status, REFUSAL)] * 5, config={"loginUrl": "/accounts/login/"})
    page = open_page(server)
    page.evaluate("""() => {
      window.denials = [];
      document.addEventListener('tasks-live:denied', (e) => window.denials.push(e.detail.status));
      window.infos = [];
      TasksLive.sources[0].subscribe((runs, connected, info) => window.infos.push(info));
    }""")
    page.wait_for_function("TasksLive.sources[0].state === 'denied'", timeout=5000)
    page.wait_for_timeout(300)  # many backoff periods (initialDelay 20 ms): nothing more
    # The EventSource request and one fetch that read the status: no retries after it.
    assert server.stream_urls == ["/events/?task=import"] * 2
    shown = page.evaluate("""() => ({
      connection: document.getElementById('connection').textContent,
      title: document.getElementById('connection').title,
      denied: document.getElementById('denied').hidden,
      href: document.querySelector('[data-tasks-live-login]').getAttribute('href'),
      cls: document.getElementById('live').className})""")
    assert shown == {"connection": "log in to see runs", "title": REFUSAL, "denied": False,
                     "href": "/accounts/login/?next=%2F",
                     "cls": "tasks-live--disconnected tasks-live--denied"}
    assert page.evaluate("window.infos.at(-1)") == {"state": "denied", "status": status,
                                                    "reason": REFUSAL}
    assert page.evaluate("window.denials") == [status]


def test_start_while_logged_out_goes_to_the_login_page_and_back(open_page):
    login = "/accounts/login/?next=/reports/"
    server = Server([event("snapshot", {"runs": [], "last_event_id": 0}, 0)],
                    config={"urls": {"start": "/start/{task}/"}},
                    post_answer=(401, {"error": "Log in to start tasks.", "login_url": login}))
    page = open_page(server)
    page.evaluate("""() => {
      const b = document.createElement('button');
      b.id = 'start'; b.setAttribute('data-tasks-live-action', 'start');
      document.getElementById('item').appendChild(b);
    }""")
    with page.expect_request(f"{ORIGIN}{login}"):
        page.click("#start")
    assert server.posts[0][0] == "/start/import/"


# ---------------------------------------------------------------- finished cards


def test_finished_cards_show_the_outcome_local_times_and_readable_results(open_page):
    outcomes = {"completed": ["Done", "Done in {duration}"],
                "canceled": ["Canceled", "Canceled after {duration}"]}
    done = state(7, "completed", 100.0, "Saving", started_at="2026-03-01T10:00:00+00:00",
                 finished_at="2026-03-01T10:00:02.5+00:00",
                 result={"imported": 3, "ratio": 0.123456, "at": 1772359202.5})
    server = Server([event("snapshot", {"runs": [done], "last_event_id": 1}, 1)],
                    config={"outcomes": outcomes})
    page = open_page(server)
    page.wait_for_function("document.getElementById('item').dataset.status === 'completed'")
    shown = page.evaluate("""() => {
      const q = (s) => document.querySelector('#item ' + s);
      return {message: q('[data-tasks-live-message]').textContent,
              when: q('[data-tasks-live-when]').textContent,
              datetime: q('[data-tasks-live-when]').getAttribute('datetime'),
              result: q('[data-tasks-live-result]').textContent,
              local: new Date('2026-03-01T10:00:02.5Z').toLocaleString()};
    }""")
    assert shown["message"] == "Done in 2.5 s"  # not the stale "Saving"
    assert shown["when"] == "finished " + shown["local"]  # the browser's local time
    assert shown["datetime"] == "2026-03-01T10:00:02.500Z"
    assert shown["result"] == f"imported: 3\nratio: 0.123\nat: {shown['local']}"


def test_a_canceled_card_drops_its_progress_message(open_page):
    outcomes = {"canceled": ["Canceled", "Canceled after {duration}"]}
    canceled = state(8, "canceled", 40.0, "242s left", started_at="2026-03-01T10:00:00Z",
                     finished_at="2026-03-01T10:01:05Z")
    server = Server([event("snapshot", {"runs": [canceled], "last_event_id": 1}, 1)],
                    config={"outcomes": outcomes})
    page = open_page(server)
    page.wait_for_function("document.getElementById('item').dataset.status === 'canceled'")
    assert item(page)["message"] == "Canceled after 1 min 5 s"
