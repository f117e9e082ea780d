"""Invariant 7: a closed breaker with a fresh snapshot makes no network or database call
before the protected function runs. The snapshot ages on a clock the test moves, so it
stays fresh however slow the machine is."""

from __future__ import annotations

import pytest

from resilience_crm import get_breaker
from resilience_crm.breakers import machine as core
from resilience_crm.exceptions import CircuitOpenError
from tests.clock import Clock, breaker_on


@pytest.mark.redis
@pytest.mark.django_db  # the first step seeds the circuit from its durable row
def test_closed_path_sends_nothing_to_redis(settings, redis_proxy):
    proxy = redis_proxy
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "proxied", "SNAPSHOT_TTL": 1}
    get_breaker("hot.path").store.clear("hot.path")
    clock = Clock()
    breaker = breaker_on("hot.path", clock)
    assert breaker.call(lambda: "first") == "first"  # fetches the snapshot
    sent = proxy.bytes_up
    assert sent > 0
    for _ in range(50):
        assert breaker.call(lambda: "ok") == "ok"
    assert proxy.bytes_up == sent
    # A failure goes to Redis at once, with the successes counted meanwhile.
    with pytest.raises(ValueError):
        breaker.call(_boom)
    assert proxy.bytes_up > sent
    assert breaker.snapshot()["calls"] == 52
    sent = proxy.bytes_up
    clock.now += 1  # the snapshot's TTL: the next call asks Redis again
    breaker.call(lambda: "ok")
    assert proxy.bytes_up > sent


@pytest.mark.django_db
def test_closed_path_sends_nothing_to_the_database(settings, django_assert_num_queries):
    settings.RESILIENCE_CRM = {"STORE": "database", "SNAPSHOT_TTL": 1}
    breaker = breaker_on("hot.path", Clock())
    breaker.call(lambda: "first")
    with django_assert_num_queries(0):
        for _ in range(50):
            breaker.call(lambda: "ok")
    assert breaker.snapshot()["state"] == core.CLOSED


@pytest.mark.redis
@pytest.mark.django_db
def test_open_circuit_rejects_without_asking_redis(settings, redis_proxy):
    proxy = redis_proxy
    settings.RESILIENCE_CRM = {
        "STORE": "redis", "CACHE_ALIAS": "proxied", "SNAPSHOT_TTL": 1,
        "CIRCUITS": {"hot.open": {"failure_threshold": 1, "reset_timeout": 30}},
    }
    get_breaker("hot.open").store.clear("hot.open")
    breaker = breaker_on("hot.open", Clock())
    with pytest.raises(ValueError):
        breaker.call(_boom)
    sent = proxy.bytes_up
    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: "never")
    assert proxy.bytes_up == sent


def _boom():
    raise ValueError("backend error")
