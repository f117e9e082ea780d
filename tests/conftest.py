from __future__ import annotations

import os

import pytest
from django.conf import settings as django_settings
from django.db import connections

from resilience_crm import events, flusher, metrics, registry
from tests.databases import APP_ALIAS, Outage, database_alias, transactional
from tests.services import require_service

CLOSED_PORT = 1  # nothing listens there; a connection is refused at once


@pytest.fixture(autouse=True)
def _fresh_breakers():
    """Every test starts with no breakers, store, counters or buffered events left by
    another, and with no background flusher: a test's database changes live in its own
    transaction, which the flusher's connection cannot see (``background_flusher`` turns it
    on)."""
    flusher.set_background(False)
    registry.clear()
    metrics.reset()
    events.clear()
    yield
    flusher.set_background(False)
    registry.clear()
    events.clear()


@pytest.fixture
def background_flusher(request):
    """The process's background flusher, running as in production (so the test is a
    transactional one); stopped again before the test's tables are emptied."""
    transactional(request)
    flusher.set_background(True)
    yield flusher
    assert flusher.stop(timeout=30), "the flusher did not stop"
    flusher.set_background(False)


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


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The ``resilience`` alias (a mirror of ``default``) reaches the test database from
    every thread: Django re-points only the mirror's connection in the main thread."""
    default = connections.settings["default"]
    connections.settings[APP_ALIAS].update({k: v for k, v in default.items() if k != "TEST"})
    del connections[APP_ALIAS]


@pytest.fixture
def database_down(request, settings, tmp_path):
    """The app's tables on a database nobody answers at (a closed port; for SQLite a file
    in a directory that does not exist), with the memory store so only events and metrics
    need the database."""
    transactional(request)  # first: it sets up the test database, and so its settings
    working = dict(connections.settings["default"])
    if working["ENGINE"] == "django.db.backends.sqlite3":
        down = {"NAME": str(tmp_path / "no-such-directory" / "db.sqlite3")}
    else:
        down = {"HOST": "127.0.0.1", "PORT": CLOSED_PORT}
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "STORE": "memory"}
    with database_alias(request, settings, **down) as settings_dict:
        yield Outage(APP_ALIAS, settings_dict, {k: working[k] for k in down})


@pytest.fixture
def postgres_proxy(request, postgres, settings):
    """A TCP proxy in front of the real PostgreSQL, the test's to stall or cut, and the app's
    tables routed through it on ``APP_ALIAS`` (with a short connect timeout)."""
    from tests.proxy import Proxy

    default = connections.settings["default"]
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        options = {**default.get("OPTIONS", {}), "connect_timeout": 2}
        with database_alias(request, settings, HOST="127.0.0.1", PORT=proxy.port,
                            OPTIONS=options):
            yield proxy
