"""Settings for the test suite: the demo project, with PostgreSQL and a django-redis alias
``"redis"`` where ``DATABASE_URL`` / ``REDIS_URL`` name them or they answer on their default
local ports (see ``tests/services.py``); SQLite in memory otherwise."""

import dj_database_url

from crm_demo.settings import *  # noqa: F403
from crm_demo.settings import RESILIENCE_CRM, guarded_engine
from tests.services import LOCAL_POSTGRES, LOCAL_REDIS, find

SERVICES = [find("DATABASE_URL", "PostgreSQL", LOCAL_POSTGRES),
            find("REDIS_URL", "Redis", LOCAL_REDIS)]
DATABASE_URL, REDIS_URL = (service.url for service in SERVICES)

DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL or "sqlite:///:memory:", conn_max_age=0)
}
# The suite runs with the query guard on the default alias, as the demo does.
DATABASES["default"]["ENGINE"] = guarded_engine(DATABASES["default"]["ENGINE"])

# A second alias of the test database, for the app's tables in the tests that route them
# there (tests/conftest.py points it at the test database, or at a dead port or a proxy).
DATABASES["resilience"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if REDIS_URL:
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "rcrm-test",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5,
                    "SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer"},
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
RESILIENCE_CRM = {"PROTECT_QUERIES": RESILIENCE_CRM["PROTECT_QUERIES"]}
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
