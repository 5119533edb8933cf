"""Serving the event stream next to Django: three lines in a project's ``asgi.py``.

```python
from django.core.asgi import get_asgi_application
from django_tasks_live.asgi import tasks_live_application

application = tasks_live_application(get_asgi_application())
```

Projects that already route with Channels add :func:`stream_route` to their
``URLRouter`` instead.
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern

from . import conf

ASGIApp = Any


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
        scope["user"] = await get_user(scope)
        return await self.inner(scope, receive, send)


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
    path = path or conf.get("SSE_URL")
    paths = {path, path.rstrip("/") or "/"}

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _local_path(scope) in paths:
            return await stream(scope, receive, send)
        return await django_asgi_app(scope, receive, send)

    return application


def _local_path(scope: dict[str, Any]) -> str:
    full, root = scope.get("path", ""), scope.get("root_path", "")
    return full[len(root):] if root and full.startswith(root) else full
