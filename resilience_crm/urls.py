from django.urls import path

from resilience_crm import views

app_name = "resilience"

urlpatterns = [
    path("health/live", views.live, name="health-live"),
    path("health/ready", views.ready, name="health-ready"),
    path("metrics", views.metrics_view, name="metrics"),
]
