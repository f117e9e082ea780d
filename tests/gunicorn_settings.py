"""Settings for the gunicorn workers the rate-limit concurrency tests start: the test
settings, on the test database pytest-django created (``RCRM_TEST_DATABASE``), with the
rate-limit URLconf and limits on the real Redis (the demo's settings carry the middleware)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["RCRM_TEST_DATABASE"]
DATABASES["default"]["CONN_MAX_AGE"] = 60  # one connection per worker thread
DATABASES["default"].pop("TEST", None)
ROOT_URLCONF = "tests.ratelimit_urls"
RESILIENCE_CRM = {"CACHE_ALIAS": "redis"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
