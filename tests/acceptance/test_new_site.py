"""A brand-new site built exactly as README.md's "Set up a project" says, in a temp dir.

The steps (shell commands and files) are read from the README by this test, in order,
so the README cannot drift from what works: ``django-admin startproject``, the files
written or appended as each block says, ``migrate``/``check``/``createsuperuser``, then
plain ``daphne`` on a free 127.0.0.1 port. Headless Chromium opens the page logged out,
follows its "Log in" link, lands back on the page, presses Start and sees the bar reach
100%: first with ``EMBEDDED_WORKER`` alone, then with a separate ``tasks_worker``, then
under ``runserver`` (the README's other server) with the embedded worker.
``pip install`` is the one step not run: this venv has the current checkout installed.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import django_tasks_live
from tests.support.processes import ROOT, Child, free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BIN = Path(sys.executable).parent
USER, PASSWORD = "admin", "admin-pw-123"

pytestmark = [
    pytest.mark.acceptance,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent"),
]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


# ---------------------------------------------------------------- reading the README


@dataclass
class Commands:
    lines: list[str]


@dataclass
class File:
    path: str
    append: bool
    text: str


FILE_MARKER = re.compile(r"^\*\*`(?P<path>[^`]+)`\*\* — (?P<how>.*)$")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def readme_steps(readme: str) -> list[Commands | File]:
    """The shell blocks and file blocks of "Set up a project", in order.

    A file block is the fenced block right after a line ``**`path`** — how``; ``how``
    says "add at the end" (append) or "the whole file" (write).
    """
    section = readme.split("\n## Set up a project\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Commands | File] = []
    position = 0
    for fence in FENCE.finditer(section):
        before = section[position:fence.start()]
        position = fence.end()
        # The paragraph right before the block (a marker's text may wrap onto more lines).
        paragraph = before.strip().split("\n\n")[-1] if before.strip() else ""
        marker = FILE_MARKER.match(paragraph.split("\n")[0]) if paragraph else None
        language, body = fence.group(1), fence.group(2)
        if marker:
            how = paragraph
            assert "the whole file" in how or "add at the end" in how, how
            steps.append(File(marker["path"], "add at the end" in how, body))
        elif language == "bash":
            steps.append(Commands([line.split("#", 1)[0].strip() for line in body.splitlines()
                                   if line.split("#", 1)[0].strip()]))
        else:
            raise AssertionError(f"A {language} block without a file marker:\n{body}")
    return steps


def test_the_readme_steps_are_what_this_test_follows():
    steps = readme_steps((ROOT / "README.md").read_text())
    files = [(step.path, step.append) for step in steps if isinstance(step, File)]
    assert files == [("mysite/settings.py", True), ("mysite/urls.py", False),
                     ("mysite/asgi.py", False), ("myapp/tasks.py", False),
                     ("myapp/templates/myapp/home.html", False), ("mysite/settings.py", True)]
    commands = [line for step in steps if isinstance(step, Commands) for line in step.lines]
    assert commands[:4] == ["pip install django-tasks-live", "django-admin startproject mysite",
                            "cd mysite", "python manage.py startapp myapp"]
    assert commands.count("daphne mysite.asgi:application") == 2


def test_the_readme_python_blocks_compile():
    # Every Python snippet of the README is valid Python (whole files and additions alike).
    readme = (ROOT / "README.md").read_text()
    blocks = [body for language, body in FENCE.findall(readme) if language == "python"]
    assert len(blocks) >= 5
    for body in blocks:
        # Top-level await: the "async views" lines stand for a view's body.
        compile(body, "<README.md block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# ---------------------------------------------------------------- following them


class NewSite:
    """Runs the README's commands in a temp dir: foreground commands to completion,
    ``tasks_worker`` and ``daphne`` as background processes the test stops."""

    def __init__(self, root: Path, port: int) -> None:
        self.cwd = root
        self.port = port
        self.children: list[Child] = []
        self.daphne: Child | None = None
        self.logs = root.parent / "logs"
        self.logs.mkdir(exist_ok=True)
        # A user's shell: no test settings, no test database.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DJANGO_", "TASKS_LIVE_", "PYTHONPATH"))}
        self.env.update(PYTHONUNBUFFERED="1", DJANGO_SUPERUSER_USERNAME=USER,
                        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
                        DJANGO_SUPERUSER_EMAIL="admin@example.com")

    def write(self, step: File) -> None:
        path = self.cwd / step.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if step.append:
            assert path.exists(), f"{step.path} should exist before the README adds to it"
            path.write_text(path.read_text() + "\n" + step.text)
        else:
            path.write_text(step.text)

    def run(self, line: str, on_serving) -> None:
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            # This venv has the current checkout installed (editable): that is the package.
            assert Path(django_tasks_live.__file__).is_relative_to(ROOT)
            return
        if words[0] == "cd":
            self.cwd = self.cwd / words[1]
            return
        if words[0] == "daphne":
            self.serve(words[1:])
            on_serving(self)
            return
        if words[0] == "django-admin":
            args = [str(BIN / "django-admin"), *words[1:]]
        elif words[0] == "python":
            args = [sys.executable, *words[1:]]
        else:
            raise AssertionError(f"The README runs {line!r}, which this test cannot follow")
        if args[-1] == "createsuperuser":
            args.append("--noinput")  # the DJANGO_SUPERUSER_* environment answers its prompts
        if args[-1] == "tasks_worker":
            worker = self.spawn(args, "worker")
            worker.wait_for_output("tasks_worker ready", 60)
            return
        done = subprocess.run(args, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        if args[-1] == "check":
            # Nothing to warn about in the README's own setup (infos only).
            assert "WARNINGS" not in done.stderr + done.stdout, done.stderr + done.stdout

    def spawn(self, args: list[str], name: str) -> Child:
        child = Child.__new__(Child)
        child.args = args
        child.log_path = self.logs / f"{name}-{len(self.children)}.log"
        child._log = open(child.log_path, "wb")
        child.proc = subprocess.Popen(args, env=self.env, cwd=self.cwd, stdout=child._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(child)
        return child

    def serve(self, daphne_args: list[str]) -> None:
        if self.daphne is not None:
            self.daphne.stop()
        # The README's command, on a free port of 127.0.0.1.
        args = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), *daphne_args]
        self.daphne = self.spawn(args, "daphne")
        wait_until(lambda: self.answers() or self.daphne.proc.poll() is not None, 60, "daphne")
        assert self.daphne.proc.poll() is None, self.daphne.output()

    def runserver(self) -> None:
        args = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}"]
        server = self.spawn(args, "runserver")
        wait_until(lambda: self.answers() or server.proc.poll() is not None, 60, "runserver")
        assert server.proc.poll() is None, server.output()

    def answers(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for child in self.children:
            child.stop()
            # runserver's reloader child is in the same session: none may outlive the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)

    def workers(self) -> list[tuple[str, int]]:
        """(worker id, processed) of the site's Worker rows, read from its SQLite file."""
        with sqlite3.connect(self.cwd / "db.sqlite3") as db:
            return db.execute("SELECT id, processed FROM django_tasks_live_worker").fetchall()

    def runs(self) -> list[tuple[int, str, str]]:
        with sqlite3.connect(self.cwd / "db.sqlite3") as db:
            return db.execute(
                "SELECT id, status, worker_id FROM django_tasks_live_run ORDER BY id").fetchall()


def press_start_and_watch(site: NewSite, browser, shots: Path, phase: str) -> int:
    """Logged out -> Log in -> back on the page -> Start -> the bar reaches 100%."""
    base = f"http://127.0.0.1:{site.port}"
    context = browser.new_context(viewport={"width": 800, "height": 500})
    page = context.new_page()
    errors: list[str] = []
    # Script errors only: the stream's 403 and the missing favicon are expected refusals.
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(base + "/")
        # Styled (the CSS came through plain daphne) and the client runs (it got the 403).
        page.wait_for_selector("main.tasks-live--denied", timeout=15_000)
        assert page.locator("[data-tasks-live-connection]").text_content() == "log in to see runs"
        border = page.eval_on_selector(".tasks-live-item", "el => getComputedStyle(el).borderLeftWidth")
        assert border == "4px", "tasks_live.css was not served"
        page.screenshot(path=str(shots / f"{phase}-logged-out.png"), full_page=True)

        page.click("a[data-tasks-live-login]")
        page.wait_for_url(re.compile(r"/admin/login/\?next=%2F$"))
        page.fill("input[name=username]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(base + "/")  # back on the page the visitor came from
        page.wait_for_selector("main.tasks-live--connected", timeout=15_000)

        page.evaluate("""() => {
          window.widths = [];
          new MutationObserver(() => {
            const bar = document.querySelector('[data-tasks-live-bar]');
            window.widths.push(parseFloat(bar.style.width));
          }).observe(document.querySelector('.tasks-live-item'), {attributes: true, subtree: true});
        }""")
        before = page.eval_on_selector(".tasks-live-item", "el => el.dataset.runId || ''")
        page.click("[data-tasks-live-action=start]")
        # The new run (the card showed the previous phase's run until now), completed.
        page.wait_for_function("""(before) => {
          const item = document.querySelector('.tasks-live-item');
          return item.dataset.runId !== before && item.dataset.status === 'completed';
        }""", arg=before, timeout=60_000)
        page.wait_for_timeout(300)  # the bar's CSS transition, for the screenshot
        page.screenshot(path=str(shots / f"{phase}-completed.png"), full_page=True)
        shown = page.evaluate("""() => {
          const q = (s) => document.querySelector('.tasks-live-item ' + s);
          return {width: q('[data-tasks-live-bar]').style.width,
                  percent: q('[data-tasks-live-percent]').textContent,
                  message: q('[data-tasks-live-message]').textContent,
                  result: q('[data-tasks-live-result]').textContent,
                  runId: document.querySelector('.tasks-live-item').dataset.runId};
        }""")
        widths = page.evaluate("window.widths")
        assert (shown["width"], shown["percent"], shown["result"]) == ("100%", "100%", "counted: 20")
        assert re.fullmatch(r"Done in \d+(\.\d)? s", shown["message"]), shown["message"]
        assert any(0 < width < 100 for width in widths), (phase, widths)  # live, not a reload
        assert not errors, errors
        return int(shown["runId"])
    finally:
        context.close()


def test_a_new_site_made_from_the_readme_runs_tasks_live(tmp_path):
    steps = readme_steps((ROOT / "README.md").read_text())
    shots = tmp_path / "screenshots"
    shots.mkdir()
    (tmp_path / "site").mkdir()
    site = NewSite(tmp_path / "site", free_port())
    finished: list[int] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

            def on_serving(site: NewSite) -> None:
                finished.append(press_start_and_watch(site, browser, shots, f"phase{len(finished) + 1}"))
                if len(finished) == 1:
                    # EMBEDDED_WORKER alone: daphne's worker ran it, and its Worker row
                    # counts it (with its next heartbeat, HEARTBEAT_INTERVAL 5 s by default).
                    wait_until(lambda: any(wid.startswith("embedded-") and done >= 1
                                           for wid, done in site.workers()), 30,
                               "the embedded worker's row to count the run")
                    # Only daphne started one: not migrate, check or createsuperuser.
                    embedded = [wid for wid, _ in site.workers() if wid.startswith("embedded-")]
                    assert embedded == [f"embedded-{socket.gethostname()}-{site.daphne.pid}"]

            for step in steps:
                if isinstance(step, File):
                    site.write(step)
                else:
                    for line in step.lines:
                        site.run(line, on_serving)
            # The README's other server: runserver (autoreloader on) with the embedded
            # worker back on. Its serving child runs it; the watching parent does not.
            site.stop()
            before = {wid for wid, _ in site.workers()}
            site.write(File("mysite/settings.py", True, 'TASKS_LIVE = {"EMBEDDED_WORKER": True}\n'))
            site.runserver()
            finished.append(press_start_and_watch(site, browser, shots, "runserver"))
            browser.close()
        assert len(finished) == 3
        runs = {run_id: (status, worker) for run_id, status, worker in site.runs()}
        workers = dict(site.workers())
        # Phase 1: EMBEDDED_WORKER alone ran it in daphne.
        status, embedded = runs[finished[0]]
        assert status == "completed" and embedded.startswith("embedded-")
        assert workers[embedded] >= 1
        # Phase 2: the embedded worker is off; the separate tasks_worker ran it.
        status, separate = runs[finished[1]]
        assert status == "completed" and not separate.startswith("embedded-")
        assert separate in workers
        # runserver: one new embedded worker (the serving child's, not the parent's), and
        # it ran the run.
        status, by_runserver = runs[finished[2]]
        assert status == "completed"
        assert set(workers) - before == {by_runserver} and by_runserver.startswith("embedded-")
    finally:
        site.stop()
    outputs = "".join(child.output() for child in site.children)
    assert "Traceback" not in outputs, outputs
