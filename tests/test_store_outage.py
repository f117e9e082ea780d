"""Redis unreachable: each worker carries on with a breaker of its own, tries the shared store
again every ``STORE_RETRY_INTERVAL``, and readiness says which circuits are on their own.

The outages are real network faults: a cache alias on a port nothing listens on, and a TCP
proxy (``tests/proxy.py``) in front of the real Redis that stops answering.
"""

from __future__ import annotations

import logging
import time

import pytest

from resilience_crm import metrics
from resilience_crm.breakers import events, registry
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.machine import Config
from resilience_crm.breakers.stores.failover import FailoverStore
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.conf import settings as conf
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import CircuitEvent
from resilience_crm.observability.health import PENALTIES
from tests.clock import Clock
from tests.waiting import wait_until

# Transitions are written to the audit trail, so the database must be reachable.
pytestmark = pytest.mark.django_db

#: django-redis's connect and read timeouts on the proxied alias, in seconds: long enough that
#: one timeout and two are told apart on a loaded machine.
SOCKET_TIMEOUT = 1.0
#: Seconds a worker keeps its own breaker before it tries Redis again.
RETRY_INTERVAL = 0.4
#: The most one call may take while Redis is down. It waits out one timeout at most (a refused
#: connection takes none); a retry inside redis-py would wait out a second one and overshoot.
OUTAGE_CALL_BOUND = 2 * SOCKET_TIMEOUT

CIRCUITS = ("crm.read", "crm.write", "crm.rpc", "crm.auth")
THRESHOLD = 3


def _redis_cache(location: str) -> dict:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "KEY_PREFIX": "rcrm-test",  # the ``redis`` alias's, so both see the same keys
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_TIMEOUT": SOCKET_TIMEOUT},
    }


def _breaker_settings(settings, alias: str) -> None:
    settings.RESILIENCE_CRM = {
        "STORE": "redis",
        "CACHE_ALIAS": alias,
        "STORE_RETRY_INTERVAL": RETRY_INTERVAL,
        # Every call steps the store, so every call would go to Redis if the breaker let it.
        "SNAPSHOT_TTL": 0,
        "CIRCUITS": {"crm.read": {"failure_threshold": THRESHOLD, "reset_timeout": 60}},
    }


@pytest.fixture
def redis_down(settings):
    """Breakers whose shared store is a django-redis alias on a port nothing listens on."""
    settings.CACHES = {**settings.CACHES, "down": _redis_cache("redis://127.0.0.1:1/0")}
    _breaker_settings(settings, "down")
    return settings


@pytest.fixture
def proxied_redis(settings, redis_proxy):
    """Breakers on the real Redis through a proxy that the test can stall."""
    proxied = settings.CACHES["proxied"]
    settings.CACHES = {**settings.CACHES, "proxied": {**proxied, "OPTIONS": {
        "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_TIMEOUT": SOCKET_TIMEOUT}}}
    _breaker_settings(settings, "proxied")
    return redis_proxy


def _boom():
    raise ValueError("backend error")


def test_call_returns_its_value_from_a_local_breaker_within_the_socket_timeout(redis_down):
    breaker = registry.get_breaker("crm.read")

    started = time.monotonic()
    value = breaker.call(lambda: "answer")
    elapsed = time.monotonic() - started

    assert value == "answer"
    assert elapsed < OUTAGE_CALL_BOUND
    assert breaker.using_fallback
    assert breaker.snapshot()["store"] == "local"
    assert metrics.value("store_errors", circuit="crm.read") == 1


def test_store_errors_count_once_per_retry_interval(redis_down):
    clock = Clock()
    store = FailoverStore(RedisStore("down"), retry_interval=RETRY_INTERVAL, monotonic=clock)
    breaker = Breaker("crm.read", Config.from_mapping(conf.circuit_config("crm.read")), store,
                      snapshot_ttl=0)

    for _ in range(50):
        assert breaker.call(lambda: "ok") == "ok"
        clock.now += RETRY_INTERVAL / 100

    assert metrics.value("store_errors", circuit="crm.read") == 1
    assert breaker.using_fallback
    clock.now += RETRY_INTERVAL  # the interval is over: the next call tries Redis again
    assert breaker.call(lambda: "ok") == "ok"
    assert metrics.value("store_errors", circuit="crm.read") == 2
    assert breaker.using_fallback


def test_outage_is_logged_once_naming_the_circuit(redis_down, caplog):
    caplog.set_level(logging.WARNING, logger="resilience_crm.stores")
    breaker = registry.get_breaker("crm.read")

    for _ in range(50):
        breaker.call(lambda: "ok")

    warnings = [r for r in caplog.records
                if r.name == "resilience_crm.stores" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "crm.read" in warnings[0].getMessage()
    assert "shared store is unavailable" in warnings[0].getMessage()


def test_failures_still_trip_the_local_breaker(redis_down):
    breaker = registry.get_breaker("crm.read")
    ran = []

    for _ in range(THRESHOLD):
        with pytest.raises(ValueError):
            breaker.call(_boom)

    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(lambda: ran.append("ran"))

    assert ran == []
    assert rejected.value.circuit == "crm.read"
    assert breaker.state == core.OPEN
    assert breaker.using_fallback
    events.flush()
    opened = CircuitEvent.objects.get(circuit__name="crm.read", to_state=core.OPEN)
    assert opened.source == CircuitEvent.Source.LOCAL


def test_local_failure_count_survives_a_failed_retry(redis_down):
    """Failures spread over several retry intervals still add up while Redis stays down."""
    breaker = registry.get_breaker("crm.read")

    for _ in range(THRESHOLD - 1):
        with pytest.raises(ValueError):
            breaker.call(_boom)
    assert breaker.state == core.CLOSED

    def tried_again() -> bool:
        breaker.snapshot()  # a store step: Redis again once the interval is over
        return metrics.value("store_errors", circuit="crm.read") > 1

    wait_until(tried_again, "the breaker to try Redis again")
    with pytest.raises(ValueError):
        breaker.call(_boom)

    assert breaker.state == core.OPEN


@pytest.mark.redis
def test_stalled_redis_is_given_up_on_and_returned_to(proxied_redis):
    proxy = proxied_redis
    breaker = registry.get_breaker("crm.read")
    assert breaker.call(lambda: "through") == "through"
    assert proxy.bytes_up > 0
    assert not breaker.using_fallback

    # Drop the pooled connection; the client reconnects to a proxy that never answers.
    proxy.stalled = True
    proxy.drop()
    started = time.monotonic()
    value = breaker.call(lambda: "stalled")
    elapsed = time.monotonic() - started

    assert value == "stalled"
    assert SOCKET_TIMEOUT * 0.9 <= elapsed < OUTAGE_CALL_BOUND  # it waited, but no longer
    assert breaker.using_fallback
    assert metrics.value("store_errors", circuit="crm.read") == 1

    proxy.stalled = False

    def back_on_redis() -> bool:
        assert breaker.call(lambda: "ok") == "ok"
        return not breaker.using_fallback

    wait_until(back_on_redis, "the breaker to return to Redis")
    assert breaker.snapshot()["store"] == "shared"

    for _ in range(THRESHOLD):
        with pytest.raises(ValueError):
            breaker.call(_boom)
    # Built apart, as another worker would, and straight on Redis rather than the proxy.
    other = Breaker("crm.read", Config.from_mapping(conf.circuit_config("crm.read")),
                    RedisStore("redis"), snapshot_ttl=0)
    assert other.state == core.OPEN
    assert not other.using_fallback
    with pytest.raises(CircuitOpenError):
        other.call(lambda: "never")


def test_one_circuits_timeout_spares_the_others_theirs(client, proxied_redis):
    """The first circuit to find Redis stalled waits out the socket timeout; the other
    circuits of this process go straight to their local breakers, so readiness stays fast."""
    proxy = proxied_redis
    for name in ("crm.read", "crm.write", "crm.rpc", "crm.auth"):
        registry.get_breaker(name).call(lambda: "warm")
    proxy.stalled = True
    proxy.drop()

    started = time.monotonic()
    assert registry.get_breaker("crm.read").call(lambda: "first") == "first"
    first = time.monotonic() - started
    started = time.monotonic()
    assert registry.get_breaker("crm.write").call(lambda: "second") == "second"
    second = time.monotonic() - started

    assert first >= SOCKET_TIMEOUT * 0.9
    assert second < SOCKET_TIMEOUT / 2  # no wait of its own: half a second is plenty
    assert registry.get_breaker("crm.write").using_fallback
    started = time.monotonic()
    body = client.get("/resilience/health/ready").json()
    assert time.monotonic() - started < 2 * SOCKET_TIMEOUT + 0.5  # the cache probe's own wait
    assert {c["store"] for c in body["circuits"].values()} == {"local"}


def test_ready_lists_every_circuit_on_its_local_breaker(admin_client, redis_down):
    client = admin_client
    response = client.get("/resilience/health/ready")

    assert response.status_code == 200  # the database answers, so this worker can serve
    body = response.json()
    assert set(body["circuits"]) == set(CIRCUITS)
    for circuit in body["circuits"].values():
        assert circuit == {"state": core.CLOSED, "store": "local"}
    assert body["status"] == "degraded"
    assert body["checks"]["cache"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["score"] == 100 - PENALTIES["cache"] - len(CIRCUITS) * PENALTIES["local_store"]
