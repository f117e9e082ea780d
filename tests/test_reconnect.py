"""Recovery leaves no dead connections behind: after the database restarts, the pool's idle
connections are all dead, and the first call that meets one has the pool replace them all,
so the first requests after recovery succeed and the circuit counts no failure."""

from __future__ import annotations

import pytest
from django.db import connections

from resilience_crm import get_breaker, metrics
from resilience_crm.breakers import machine as core
from resilience_crm.provider.facade import Provider
from tests.databases import PROXIED_ALIAS, PROXIED_POOL

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REQUESTS = 50


@pytest.fixture
def provider(settings, redis_cache):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "CIRCUITS": {"crm.read": {"call_timeout": 2.0}}}
    return Provider()


def request(provider: Provider, n: int) -> object:
    """A read of its own (nothing cached), its connection given back afterwards as at the
    end of a request."""
    def fetch() -> object:
        with connections[PROXIED_ALIAS].cursor() as cursor:
            cursor.execute("SELECT %s", [n])
            return cursor.fetchone()[0]
    try:
        return provider.read(f"contacts:{n}", fetch, using=PROXIED_ALIAS)
    finally:
        connections[PROXIED_ALIAS].close()


@pytest.mark.parametrize("database_behind_proxy", ["pooled"], indirect=True)
def test_the_first_requests_after_a_restart_succeed_and_count_no_failure(
        provider, database_behind_proxy):
    assert request(provider, -1) == -1  # the breaker seeded, the pool opened
    pool = connections[PROXIED_ALIAS].pool
    pool.wait(30)
    idle = pool.get_stats()["pool_available"]
    assert idle == PROXIED_POOL["max_size"]

    database_behind_proxy.drop()  # the server restarts: every open connection is gone

    # One after another, as a worker serves them: before, the first met three dead
    # connections in a row (one per attempt) and failed.
    answers = [request(provider, n) for n in range(REQUESTS)]

    assert answers == list(range(REQUESTS))  # no error, every answer from the database
    snapshot = get_breaker("crm.read").snapshot()
    assert (snapshot["state"], snapshot["failures"]) == (core.CLOSED, 0)
    assert metrics.value("calls", circuit="crm.read", outcome="failure") == 0
    assert metrics.value("calls", circuit="crm.read", outcome="success") == REQUESTS + 1
