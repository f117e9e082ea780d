from __future__ import annotations

import contextlib
import os
import shutil
from urllib.parse import urlparse

import pytest
import sentry_sdk
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connections
from django_redis import get_redis_connection

import resilience_crm.ratelimit.limiter as limiter
import resilience_crm.ratelimit.stores.database as database_limiter
from resilience_crm import flusher, testutils
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
from tests import redis_cluster, replica
from tests.databases import (
    APP_ALIAS,
    CLOSED_PORT,
    PROXIED_ALIAS,
    PROXIED_POOL,
    Outage,
    database_alias,
    extra_database,
    transactional,
)
from tests.demo_api import PASSWORD, api_client
from tests.proxy import PROXY_SOCKET_TIMEOUT, Proxy
from tests.sentry_server import SentryServer, sentry_sending_to
from tests.services import header, require_service


@pytest.fixture(autouse=True)
def _fresh_breakers():
    """Every test starts with nothing the process remembered from another
    (``testutils.reset()``: breakers, counters, events, limits, tiers, cached reads), and
    with no background flusher: a test's database changes live in its own transaction, which
    the flusher's connection cannot see (``background_flusher`` turns it on)."""
    testutils.set_background(False)
    testutils.reset()
    caches["default"].clear()  # reads cached by another (local memory lives as long as the run)
    yield
    testutils.set_background(False)
    _empty_database_limiter()
    testutils.reset()


def _empty_database_limiter() -> None:
    """The database limiter store writes on a connection of its own, outside the test's
    transaction: empty its table after a test that used it, and close its connections, the
    live server's threads' too (the test database is dropped at the end, which a connection
    left open would refuse)."""
    store = limiter.built_store()
    if isinstance(store, DatabaseLimiterStore):
        with contextlib.suppress(StoreUnavailable):
            store.clear()
    database_limiter.close_connections(every_thread=True)


@pytest.fixture
def unguarded(settings):
    """The query guard off (the suite turns it on for ``default``): for tests that count
    every call or metric row exactly, which the guard's own counts of their statements (and
    of the metric writes themselves) would add to."""
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "PROTECT_QUERIES": {}}


@pytest.fixture
def background_flusher(request):
    """The process's background flusher, running as in production (so the test is a
    transactional one); stopped again before the test's tables are emptied."""
    transactional(request)
    testutils.set_background(True)
    yield flusher
    assert flusher.stop(timeout=30), "the flusher did not stop"
    testutils.set_background(False)


def pytest_report_header(config):
    return header(django_settings.SERVICES)


def _service(name: str):
    return next(s for s in django_settings.SERVICES if s.name == name)


@pytest.fixture(scope="session")
def redis_url():
    """The Redis the suite found (``REDIS_URL``, or the default local port), answering."""
    redis = _service("Redis")
    url = redis.url
    require_service("Redis", bool(url), redis.why)
    try:
        get_redis_connection("redis").ping()
    except Exception as err:
        require_service("Redis", False, f"{url} did not answer: {err}")
    return url


@pytest.fixture
def redis_cache(redis_url):
    """The django-redis cache alias ``"redis"``, emptied of this suite's keys."""
    cache = caches["redis"]
    cache.delete_pattern("*")
    yield cache
    cache.delete_pattern("*")


@pytest.fixture(scope="session")
def postgres():
    """The tests' database is a PostgreSQL one (``DATABASE_URL``, or the default local
    port)."""
    postgres = _service("PostgreSQL")
    require_service(
        "PostgreSQL", connections["default"].vendor == "postgresql",
        postgres.why if not postgres.url else "DATABASE_URL does not name a PostgreSQL database",
    )


@pytest.fixture(scope="session")
def streaming_replica():
    """A PostgreSQL primary and its streaming replica of its own (:mod:`tests.replica`),
    once per session."""
    require_service("A streaming replica", replica.missing() is None, str(replica.missing()))
    servers = replica.Servers()
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_cluster_servers():
    """A Redis Cluster of three masters with a replica each (:mod:`tests.redis_cluster`),
    once per session; fails rather than skips under RESILIENCE_CRM_REQUIRE_SERVICES=1."""
    missing = redis_cluster.missing()
    require_service("A Redis Cluster", missing is None, str(missing))
    cluster = redis_cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_cache(settings, redis_cluster_servers):
    """A django-redis cache alias ``"cluster"`` on the session's Redis Cluster (emptied, every
    slot served), and the cluster itself."""
    cluster = redis_cluster_servers
    cluster.wait_healthy()
    cluster.flush()
    settings.CACHES = {**settings.CACHES, "cluster": cluster.cache(
        SERIALIZER="resilience_crm.cache_serializer.SignedJSONSerializer")}
    yield cluster
    caches["cluster"].client.disconnect()


@pytest.fixture
def redis_proxy(settings, redis_cache, redis_url):
    """A TCP proxy in front of the real Redis, the test's to watch, stall or cut, and a
    django-redis cache alias ``"proxied"`` through it (same keys as the ``redis`` alias)."""
    target = urlparse(redis_url)
    with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        settings.CACHES = {**settings.CACHES, "proxied": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": proxy.url(path=target.path or "/0"),
            "KEY_PREFIX": "rcrm-test",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": PROXY_SOCKET_TIMEOUT,
                        "SOCKET_TIMEOUT": PROXY_SOCKET_TIMEOUT,
                        "SERIALIZER": settings.CACHES["redis"]["OPTIONS"]["SERIALIZER"]},
        }}
        yield proxy


@pytest.fixture
def redis_settings(settings, redis_cache):
    """Breakers on the real Redis store."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    return settings


@pytest.fixture
def unreachable_database(transactional_db):
    """The alias of a database connection to a port nothing listens on (``DatabaseError`` at
    once); the default connection's settings otherwise."""
    working = dict(connections["default"].settings_dict)
    if working["ENGINE"].endswith("sqlite3"):
        down = {**working, "NAME": "/nonexistent-directory/db.sqlite3"}
    else:
        down = {**working, "HOST": "127.0.0.1", "PORT": CLOSED_PORT}
    with extra_database("resilience_unreachable", down) as alias:
        yield alias


@pytest.fixture
def api(settings, redis_cache, postgres, transactional_db, monkeypatch):
    """The demo API's client (:func:`tests.demo_api.api_client`) for the user ``ada``, whose
    password is ``PASSWORD``."""
    return api_client(settings, monkeypatch, User.objects.create_user("ada", password=PASSWORD))


@pytest.fixture
def sentry():
    """A local ingest endpoint, with sentry-sdk initialised to send to it."""
    with SentryServer() as server, sentry_sending_to(server.dsn):
        yield server
    assert not sentry_sdk.is_initialized()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The ``resilience`` alias (a mirror of ``default``) reaches the test database from
    every thread: Django re-points only the mirror's connection in the main thread. The
    database limiter store's connections, from any thread, are closed before the test
    database is dropped."""
    default = connections.settings["default"]
    connections.settings[APP_ALIAS].update({k: v for k, v in default.items() if k != "TEST"})
    del connections[APP_ALIAS]
    yield
    database_limiter.close_connections(every_thread=True)


@pytest.fixture
def database_down(request, settings, tmp_path):
    """The app's tables on a database nobody answers at (a closed port; for SQLite a file
    in a directory that does not exist), with the memory store so only events and metrics
    need the database."""
    transactional(request)  # first: it sets up the test database, and so its settings
    working = dict(connections.settings["default"])
    if working["ENGINE"].endswith("sqlite3"):
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
    default = connections.settings["default"]
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        options = {**default.get("OPTIONS", {}), "connect_timeout": 2}
        with database_alias(request, settings, HOST="127.0.0.1", PORT=proxy.port,
                            OPTIONS=options):
            yield proxy


@pytest.fixture(params=["pooled", "unpooled"])
def database_behind_proxy(request, postgres, transactional_db):
    """The alias ``PROXIED_ALIAS``: the test database behind a TCP proxy the test cuts,
    resets or stalls, with the demo's connection settings (``connect_timeout``, and psycopg's
    pool of ``PROXIED_POOL`` for the ``pooled`` parameter, or the pool options a test gives
    as its parameter). Yields the proxy."""
    default = connections["default"].settings_dict
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        options = {**default.get("OPTIONS", {}), "connect_timeout": 2}
        if request.param != "unpooled":
            options["pool"] = PROXIED_POOL if request.param == "pooled" else request.param
        with extra_database(PROXIED_ALIAS, {**default, "HOST": "127.0.0.1",
                                            "PORT": str(proxy.port), "OPTIONS": options}):
            try:
                yield proxy
            finally:
                connections[PROXIED_ALIAS].close()
                connections[PROXIED_ALIAS].close_pool()


@pytest.fixture
def page(monkeypatch):
    """A headless page of Debian's chromium, driven by Playwright (skip or fail without)."""
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or ""
    require_service("Chromium", bool(executable),
                    "no chromium on PATH (apt-get install chromium, or set CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_service("Chromium", False, "playwright is not installed")
    # Playwright runs an event loop in this thread; the ORM calls around it are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        page = browser.new_page()
        page.set_default_timeout(10_000)
        yield page
        browser.close()
        # The test's ORM calls ran beside Playwright's loop, so asgiref gave them their own
        # connections; close them here or they outlive the test database.
        connections.close_all()
