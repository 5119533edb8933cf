"""The test project's ASGI application: Django plus the event stream (as users write it)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from django_tasks_live.asgi import tasks_live_application  # noqa: E402 - needs apps loaded

application = tasks_live_application(django_asgi_app)
