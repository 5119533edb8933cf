from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/", include("django_tasks_live.urls")),
    # A page using the template tags, for the browser tests (the path names the task item).
    path("live/<str:task>/", TemplateView.as_view(template_name="tasks_live_test/live_page.html"),
         name="live-page"),
]
