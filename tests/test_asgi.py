"""tasks_live_application(): the stream, Django, and static files while DEBUG is on."""

import asyncio

from asgiref.testing import ApplicationCommunicator
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import OperationalError
from django.test import override_settings

from django_tasks_live.asgi import tasks_live_application


async def django_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"django"})


def get(app, path: str, headers=()) -> tuple[int, dict[bytes, bytes], bytes]:
    async def scenario():
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                 "headers": list(headers), "http_version": "1.1", "scheme": "http"}
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": b""})
        start = await comm.receive_output(5)
        body = b""
        while True:
            message = await comm.receive_output(5)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await comm.wait(5)
        return start["status"], dict(start["headers"]), body

    return asyncio.run(scenario())


SCRIPT = "/static/django_tasks_live/tasks_live.js"


@override_settings(DEBUG=True)
def test_debug_serves_the_client_script_like_runserver():
    status, headers, body = get(tasks_live_application(django_app), SCRIPT)
    assert status == 200
    assert headers[b"Content-Type"].startswith(b"text/javascript")
    assert b"TasksLive" in body
    # Everything outside STATIC_URL is still Django's.
    assert get(tasks_live_application(django_app), "/page/")[0] == 299


@override_settings(DEBUG=False)
def test_without_debug_static_files_are_left_to_the_site():
    # Production: collectstatic + WhiteNoise or the proxy; the app does not serve them.
    assert get(tasks_live_application(django_app), SCRIPT) == (299, {}, b"django")


@override_settings(DEBUG=True, STATIC_URL="https://cdn.example.com/static/")
def test_a_remote_static_url_is_not_served_locally():
    assert get(tasks_live_application(django_app), SCRIPT)[0] == 299


class SessionStore(DatabaseSessionStore):
    """Django's database session store while the database is away."""

    def load(self):
        raise OperationalError("connection to server at 127.0.0.1 failed: refused")


@override_settings(SESSION_ENGINE="tests.test_asgi")
def test_a_stream_request_while_the_database_is_away_gets_a_503_to_retry():
    status, headers, body = get(tasks_live_application(django_app), "/tasks/events/",
                                [(b"cookie", b"sessionid=0123456789abcdefghijklmnopqrstuv")])
    assert status == 503
    assert headers[b"Retry-After"] == b"2"
    assert body == b"The database is unavailable; retry shortly."
