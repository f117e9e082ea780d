"""Settings for the demo served by gunicorn in tests: the demo's own (its PostgreSQL pool and
timeouts, django-redis), with the test's Redis key prefix and breaker settings from the
environment (``CACHE_KEY_PREFIX``, ``RESILIENCE_CRM_JSON``, and ``ATOMIC_REQUESTS=1`` for
requests in transactions)."""

import json
import os

from crm_demo.settings import *  # noqa: F403
from crm_demo.settings import CACHES, DATABASES, RESILIENCE_CRM

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
CACHES["default"]["KEY_PREFIX"] = os.environ["CACHE_KEY_PREFIX"]
DATABASES["default"]["ATOMIC_REQUESTS"] = os.environ.get("ATOMIC_REQUESTS") == "1"
# The demo's settings (the query guard on "default"), with the test's on top.
RESILIENCE_CRM = {**RESILIENCE_CRM, **json.loads(os.environ.get("RESILIENCE_CRM_JSON", "{}"))}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"handlers": [], "level": "CRITICAL"}}
