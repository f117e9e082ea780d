"""Settings for the test suite: the demo project, with PostgreSQL when ``DATABASE_URL`` names
it and a django-redis alias ``"redis"`` when ``REDIS_URL`` is set."""

import os

import dj_database_url

from crm_demo.settings import *  # noqa: F403

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "sqlite:///:memory:"), conn_max_age=0
    )
}

# A second alias of the test database, for the app's tables in the tests that route them
# there (tests/conftest.py points it at the test database, or at a dead port or a proxy).
DATABASES["resilience"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "rcrm-test",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
RESILIENCE_CRM = {}
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
