"""ASGI entry point of the demo: Django plus the live event stream."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
django_application = get_asgi_application()  # sets Django up before the stream is imported

# The lines a project adds to its asgi.py:
from django_tasks_live.asgi import tasks_live_application  # noqa: E402

application = tasks_live_application(django_application)
