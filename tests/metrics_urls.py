"""The rate-limit test views and the app's own endpoints, for the metrics test's workers."""

from django.urls import include, path

from tests.ratelimit_urls import urlpatterns as ratelimit_patterns

urlpatterns = [*ratelimit_patterns, path("resilience/", include("resilience_crm.urls"))]
