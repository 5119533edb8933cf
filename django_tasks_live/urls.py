"""``path("tasks/", include("django_tasks_live.urls"))``.

The event stream (``SSE_URL``, by default ``/tasks/events/``) is served by the ASGI app
in :mod:`django_tasks_live.asgi`, not by these routes.
"""

from django.urls import path, re_path

from . import views

app_name = "tasks_live"
urlpatterns = [
    path("start/<str:task_name>/", views.start, name="start"),
    path("runs/", views.run_list, name="runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/cancel/", views.cancel, name="cancel"),
    path("runs/<int:run_id>/rerun/", views.rerun, name="rerun"),
    re_path(r"^(?P<path>.*)$", views.not_found),  # JSON 404s, not the site's HTML page
]
