"""Serving the event stream next to Django: three lines in a project's ``asgi.py``.

```python
from django.core.asgi import get_asgi_application
from django_tasks_live.asgi import tasks_live_application

application = tasks_live_application(get_asgi_application())
```

Projects that already route with Channels add :func:`stream_route` to their
``URLRouter`` instead. With ``DEBUG`` on, :func:`tasks_live_application` also serves
static files, as ``runserver`` does, so plain ``daphne`` serves ``tasks_live.js``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from django.urls import URLPattern

from . import conf

ASGIApp = Any
logger = logging.getLogger(__name__)


def stream_app() -> ASGIApp:
    """The stream consumer behind session authentication (``scope["user"]``)."""
    # Imported here: it needs the app registry, which get_asgi_application() fills.
    from .sse import EventStreamConsumer

    return SessionUser(EventStreamConsumer.as_asgi())


class SessionUser:
    """Puts the Django session's user in ``scope["user"]``, read-only.

    Channels' ``AuthMiddlewareStack`` does the same but also wraps ``send`` to save the
    session, a cost paid on every event written to every stream; the stream never
    changes the session, so it reads it once and passes ``send`` through untouched.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        from importlib import import_module

        from channels.auth import get_user
        from django.conf import settings
        from django.http.cookie import parse_cookie

        cookie = dict(scope.get("headers", [])).get(b"cookie", b"").decode("latin-1")
        key = parse_cookie(cookie).get(settings.SESSION_COOKIE_NAME)
        session = import_module(settings.SESSION_ENGINE).SessionStore(key)
        scope = {**scope, "session": session}
        try:
            scope["user"] = await get_user(scope)
        except DatabaseError:
            # The session cannot be read while the database is away: a 503 the client
            # retries (with its Last-Event-ID), not daphne's 500 and a traceback.
            logger.warning("tasks_live: stream refused, the database is unavailable")
            return await unavailable(send)
        return await self.inner(scope, receive, send)


async def unavailable(send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"Content-Type", b"text/plain; charset=utf-8"), (b"Retry-After", b"2")]})
    await send({"type": "http.response.body",
                "body": b"The database is unavailable; retry shortly."})


def stream_route(route: str | None = None) -> URLPattern:
    """A ``URLRouter`` entry: ``URLRouter([stream_route(), re_path("", django_app)])``.

    ``route`` defaults to the ``SSE_URL`` setting without its leading slash.
    """
    from django.urls import path

    return path(route if route is not None else conf.get("SSE_URL").lstrip("/"), stream_app())


def tasks_live_application(django_asgi_app: ASGIApp, path: str | None = None) -> ASGIApp:
    """An ASGI app serving the event stream at ``path`` and everything else with Django.

    ``path`` defaults to the ``SSE_URL`` setting (``/tasks/events/``). Only that exact
    path (with or without its trailing slash) goes to the stream; websockets, lifespan
    and every other request go to ``django_asgi_app`` unchanged.
    """
    stream = stream_app()
    django_asgi_app = with_static_files(django_asgi_app)
    path = path or conf.get("SSE_URL")
    paths = {path, path.rstrip("/") or "/"}

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _local_path(scope) in paths:
            return await stream(scope, receive, send)
        return await django_asgi_app(scope, receive, send)

    return application


def with_static_files(django_asgi_app: ASGIApp) -> ASGIApp:
    """``django_asgi_app`` that also serves ``STATIC_URL`` while ``DEBUG`` is on.

    ``runserver`` does this for every project; plain ``daphne`` does not, and a page
    without ``tasks_live.js`` is dead. In production (``DEBUG`` off) static files are
    the job of ``collectstatic`` plus WhiteNoise or the proxy, as for any Django site.
    """
    from django.conf import settings

    if not (settings.DEBUG and static_url_is_local()):
        return django_asgi_app
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(django_asgi_app)


def static_url_is_local() -> bool:
    """Can this process serve STATIC_URL itself (staticfiles installed, a path, no host)?"""
    from urllib.parse import urlparse

    from django.apps import apps
    from django.conf import settings

    static_url = settings.STATIC_URL or ""
    return (apps.is_installed("django.contrib.staticfiles") and bool(static_url)
            and not urlparse(static_url).netloc)


def _local_path(scope: dict[str, Any]) -> str:
    full, root = scope.get("path", ""), scope.get("root_path", "")
    return full[len(root):] if root and full.startswith(root) else full
