"""Settings for gunicorn workers with Redis absent: the test settings on the test database
pytest-django created (``RCRM_TEST_DATABASE``), a local-memory cache only, so ``auto`` keeps
the rate limits in PostgreSQL (the database limiter store)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["RCRM_TEST_DATABASE"]
DATABASES["default"]["CONN_MAX_AGE"] = 60  # one connection per worker thread
DATABASES["default"].pop("TEST", None)
DATABASES["resilience"] = {**DATABASES["default"]}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
ROOT_URLCONF = "tests.ratelimit_urls"
RESILIENCE_CRM = {"RATELIMIT_STORE": "auto"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
