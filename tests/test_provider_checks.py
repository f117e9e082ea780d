"""The write queue's deployment checks, /ready's persistence warning, the problem responses
and the public entry points of the provider."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.checks import run_checks
from django.db import connections
from django_redis import get_redis_connection
from rest_framework.exceptions import NotFound

from resilience_crm import checks, get_breaker, protected
from resilience_crm.drf import exception_handler
from resilience_crm.exceptions import (
    CircuitOpenError,
    IdempotencyConflict,
    OperationTimeout,
    RateLimited,
)
from resilience_crm.provider import checks as provider_checks
from resilience_crm.provider import labels, probe
from resilience_crm.provider.facade import Provider

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def deploy_ids(settings: Any, **config: Any) -> set[str]:
    settings.RESILIENCE_CRM = config
    return {m.id for m in run_checks(tags=[checks.TAG], include_deployment_checks=True)
            if m.id}


def redis_persistent() -> bool:
    client = get_redis_connection("redis")
    config = {**client.config_get("appendonly"), **client.config_get("save")}
    return config.get("appendonly") == "yes" or bool(str(config.get("save", "")).strip())


def test_w010_without_redis_writes_are_refused_during_an_outage(settings):
    settings.CACHES = LOCMEM
    assert checks.Codes.QUEUE_WITHOUT_REDIS in deploy_ids(settings)
    message = next(m for m in run_checks(tags=[checks.TAG], include_deployment_checks=True)
                   if m.id == checks.Codes.QUEUE_WITHOUT_REDIS)
    assert "503 QUEUE_UNAVAILABLE" in message.msg


def test_w010_is_a_deployment_check(settings):
    settings.CACHES = LOCMEM
    settings.RESILIENCE_CRM = {}
    assert checks.Codes.QUEUE_WITHOUT_REDIS not in {m.id for m in run_checks(
        tags=[checks.TAG])}


@pytest.mark.redis
def test_w011_follows_the_persistence_of_the_real_redis(settings, redis_cache):
    found = deploy_ids(settings, STORE="redis", CACHE_ALIAS="redis")
    assert checks.Codes.QUEUE_WITHOUT_REDIS not in found
    assert (checks.Codes.QUEUE_NOT_PERSISTENT in found) is not redis_persistent()


@pytest.mark.redis
def test_ready_warns_when_redis_would_lose_queued_writes(settings, redis_cache, client, db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    body = client.get("/resilience/health/ready").json()
    assert ("warnings" in body) is not redis_persistent()
    assert (probe.persistence_problem() is None) is redis_persistent()


@pytest.fixture
def eviction_policy(redis_cache):
    """Set the real Redis's ``maxmemory-policy`` for the test (``CONFIG SET``), then put back
    the one it had."""
    client = get_redis_connection("redis")
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]

    def set_policy(policy: str) -> None:
        client.config_set("maxmemory-policy", policy)
        probe.forget_redis_config()

    yield set_policy
    set_policy(before)


@pytest.mark.redis
@pytest.mark.parametrize(("policy", "warned"), [
    ("allkeys-lru", True), ("allkeys-random", True), ("noeviction", False),
    ("volatile-lru", False),  # the stream has no TTL: never evicted
])
def test_w013_warns_when_redis_could_evict_the_queue(settings, eviction_policy, policy,
                                                     warned):
    eviction_policy(policy)
    found = deploy_ids(settings, STORE="redis", CACHE_ALIAS="redis")
    assert (checks.Codes.QUEUE_EVICTABLE in found) is warned


@pytest.mark.redis
def test_w011_and_w013_say_they_asked_redis(settings, eviction_policy):
    """The only checks that talk to a server say so in their text."""
    eviction_policy("allkeys-lru")
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    found = [m for m in run_checks(tags=[checks.TAG], include_deployment_checks=True)
             if m.id in (checks.Codes.QUEUE_NOT_PERSISTENT, checks.Codes.QUEUE_EVICTABLE)]
    assert found and all("asked Redis with CONFIG GET" in m.msg for m in found)


@pytest.mark.redis
def test_ready_warns_when_redis_could_evict_the_queue(settings, eviction_policy, client, db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    eviction_policy("allkeys-lru")
    warnings = client.get("/resilience/health/ready").json().get("warnings", [])
    assert any("maxmemory-policy allkeys-lru" in warning for warning in warnings)
    eviction_policy("noeviction")
    warnings = client.get("/resilience/health/ready").json().get("warnings", [])
    assert not any("maxmemory-policy" in warning for warning in warnings)


@pytest.mark.redis
def test_w014_warns_when_the_redis_cache_pickles(settings, redis_cache):
    assert checks.Codes.CACHE_PICKLES not in deploy_ids(settings, CACHE_ALIAS="redis")
    redis = settings.CACHES["redis"]
    settings.CACHES = {**settings.CACHES, "redis": {
        **redis, "OPTIONS": {k: v for k, v in redis["OPTIONS"].items() if k != "SERIALIZER"}}}
    assert checks.Codes.CACHE_PICKLES in deploy_ids(settings, CACHE_ALIAS="redis")


@pytest.mark.parametrize(("error", "status", "code"), [
    (CircuitOpenError(retry_after=12.2, circuit="crm.read"), 503, "CIRCUIT_OPEN"),
    (RateLimited(retry_after=3), 429, "RATE_LIMITED"),
    (OperationTimeout(circuit="crm.read"), 504, "TIMEOUT"),
    (IdempotencyConflict(), 422, "IDEMPOTENCY_CONFLICT"),
])
def test_every_resilience_error_is_a_problem_response(error, status, code):
    labels.begin()
    response = exception_handler(error, {})
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == code and body["status"] == status
    assert body["detail"] == error.message
    if status in (503, 429):
        assert int(response["Retry-After"]) >= 1
    if error.retry_after == 12.2:
        assert response["Retry-After"] == "13"


def test_other_errors_are_left_to_drf():
    assert exception_handler(NotFound(), {}).status_code == 404
    assert exception_handler(ValueError(), {}) is None


def test_protected_is_importable_from_the_package():
    assert isinstance(protected, Provider)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)  # the circuits are seeded from their rows
def test_the_async_variants(settings, redis_cache):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}

    async def main():
        value = await protected.aread("numbers:one", lambda: 1, using=None)
        labels.begin()
        get_breaker("crm.read").force("forced_open")
        try:
            return value, await protected.aread("numbers:two", lambda: 2, fallback=lambda: 0,
                                                using=None), labels.headers()
        finally:
            # The thread the sync parts ran on seeded the circuits from their rows: close
            # its connection, as a request's end would (the test database is dropped later).
            await sync_to_async(connections.close_all)()

    assert asyncio.run(main()) == (1, 0, {labels.FALLBACK_HEADER: labels.DEGRADED})




def pooled(settings: Any, pool: Any) -> None:
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": "crm",
                "OPTIONS": {"pool": pool}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to ..."
        settings.DATABASES = settings.DATABASES | {"pooled": database}


@pytest.mark.parametrize(("check", "pool", "config", "warned"), [
    # W012: a pool's wait for a connection must fit in the shortest call_timeout.
    ("POOL_WAIT_OVER_BUDGET", True, {}, True),  # psycopg_pool's 30 s against call_timeout 10
    ("POOL_WAIT_OVER_BUDGET", {"timeout": 1.0}, {}, False),
    ("POOL_WAIT_OVER_BUDGET", {"timeout": 2.0},
     {"CIRCUITS": {"crm.rpc": {"call_timeout": 2}}}, True),
    ("POOL_WAIT_OVER_BUDGET", {"timeout": 2.0}, {"CIRCUIT_DEFAULTS": {"call_timeout": 3}}, False),
    # W085: a pool must retry connecting as often as a circuit tries (the shortest
    # reset_timeout).
    ("POOL_RECONNECT_OVER_RESET", True, {}, True),  # psycopg_pool's 300 s against 30
    ("POOL_RECONNECT_OVER_RESET", {"reconnect_timeout": 30}, {}, False),
    ("POOL_RECONNECT_OVER_RESET", {"reconnect_timeout": 5},
     {"CIRCUITS": {"crm.db": {"reset_timeout": 3}}}, True),
    ("POOL_RECONNECT_OVER_RESET", {"reconnect_timeout": 2.0},
     {"CIRCUIT_DEFAULTS": {"reset_timeout": 3}}, False),
])
def test_w012_w085_a_pool_must_fit_the_circuits(settings, check, pool, config, warned):
    pooled(settings, pool)
    settings.RESILIENCE_CRM = config
    code = getattr(checks.Codes, check)
    found = [m for m in provider_checks.check_pool_timeout()
             + provider_checks.check_pool_reconnect() if m.id == code]
    assert bool(found) is warned
    if found:
        assert 'DATABASES["pooled"]' in found[0].msg
        named = {"POOL_WAIT_OVER_BUDGET": "s call_timeout",
                 "POOL_RECONNECT_OVER_RESET": "s reset_timeout"}[check]
        assert named in found[0].msg


def test_the_demo_bounds_every_wait_on_postgresql():
    """crm_demo's settings, as a process with a PostgreSQL DATABASE_URL loads them."""
    code = ("import json, crm_demo.settings as s; "
            "print(json.dumps(s.DATABASES['default']['OPTIONS']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "DATABASE_URL": "postgres://u@h/db"})
    options = json.loads(out.stdout)
    assert options["pool"]["timeout"] == 1.0
    # W085 holds with the chaos run's 3 s reset_timeout too.
    assert options["pool"]["reconnect_timeout"] <= 3
    assert options["connect_timeout"] == 2 and options["keepalives"] == 1
    assert options["tcp_user_timeout"] > 0
