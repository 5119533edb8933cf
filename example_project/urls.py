"""URLs of the demo site: the demo pages, the admin, and the app's endpoints under tasks/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/", include("django_tasks_live.urls")),
    path("", include("example_project.demo.urls")),
]
