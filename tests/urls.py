from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from django.views.generic import TemplateView

from django_tasks_live.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/metrics", metrics_view),  # before the app's URLs (they end in a JSON 404)
    path("tasks/", include("django_tasks_live.urls")),
    # A page using the template tags, for the browser tests (the path names the task item).
    path("live/<str:task>/", TemplateView.as_view(template_name="tasks_live_test/live_page.html"),
         name="live-page"),
    # Plain daphne serves no static files; the browser tests need tasks_live.js.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]
