from __future__ import annotations

import os

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches

from resilience_crm import metrics, registry, retries
from resilience_crm.provider import protected
from tests.services import require_service


@pytest.fixture(autouse=True)
def _fresh_breakers():
    """Every test starts with no breakers, store or counters left by another."""
    registry.clear()
    metrics.reset()
    yield
    registry.clear()


@pytest.fixture(autouse=True)
def _fresh_reads():
    """Nor with reads cached by another (the local-memory cache lives as long as the run)."""
    caches["default"].clear()
    protected.cache.forget_local()
    retries.clear_budgets()
    yield
    protected.cache.forget_local()


@pytest.fixture
def redis_url():
    url = os.environ.get("REDIS_URL", "")
    require_service("Redis", bool(url), "REDIS_URL is not set")
    from django_redis import get_redis_connection

    try:
        get_redis_connection("redis").ping()
    except Exception as err:
        require_service("Redis", False, f"{url} did not answer: {err}")
    return url


@pytest.fixture
def redis_cache(redis_url):
    """The django-redis cache alias ``"redis"``, emptied of this suite's keys."""
    from django.core.cache import caches

    cache = caches["redis"]
    cache.delete_pattern("*")
    yield cache
    cache.delete_pattern("*")


@pytest.fixture
def postgres():
    engine = django_settings.DATABASES["default"]["ENGINE"]
    require_service(
        "PostgreSQL", engine == "django.db.backends.postgresql",
        "DATABASE_URL does not name a PostgreSQL database",
    )


@pytest.fixture
def redis_proxy(settings, redis_cache, redis_url):
    """A TCP proxy in front of the real Redis, the test's to watch, stall or cut, and a
    django-redis cache alias ``"proxied"`` through it (same keys as the ``redis`` alias)."""
    from urllib.parse import urlparse

    from tests.proxy import PROXY_SOCKET_TIMEOUT, Proxy

    target = urlparse(redis_url)
    with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        settings.CACHES = {**settings.CACHES, "proxied": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": proxy.url(path=target.path or "/0"),
            "KEY_PREFIX": "rcrm-test",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": PROXY_SOCKET_TIMEOUT,
                        "SOCKET_TIMEOUT": PROXY_SOCKET_TIMEOUT},
        }}
        yield proxy


@pytest.fixture
def redis_settings(settings, redis_cache):
    """Breakers on the real Redis store."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    return settings
