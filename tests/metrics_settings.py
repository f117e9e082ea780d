"""Settings for the gunicorn workers of the metrics test: the rate-limit workers' settings,
with the app's endpoints and a monitoring token."""

from tests.gunicorn_settings import *  # noqa: F403

ROOT_URLCONF = "tests.metrics_urls"
RESILIENCE_CRM = {"CACHE_ALIAS": "redis", "MONITORING_TOKEN": "metrics-test-token"}
