from django.urls import path

from resilience_crm.observability import health

app_name = "resilience"

urlpatterns = [
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("metrics", health.metrics_view, name="metrics"),
]
