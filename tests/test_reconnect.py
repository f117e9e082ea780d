"""Recovery leaves no dead connections behind: after the database restarts, the pool's idle
connections are all dead, and the first call that meets one has the pool replace them all,
so the first requests after recovery succeed and the circuit counts no failure. And after a
stall (the server silent, every connect timing out) the pool tries again soon enough for
the circuit to close within its ``reset_timeout`` and a few seconds (system check W085)."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
from django.db import connections

from resilience_crm import get_breaker, metrics
from resilience_crm.breakers import machine as core
from resilience_crm.exceptions import ResilienceError
from resilience_crm.provider.facade import Provider
from tests.databases import PROXIED_ALIAS, PROXIED_POOL

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REQUESTS = 50
#: The stalled circuit's reset_timeout (and its backoff cap), in seconds.
RESET_TIMEOUT = 1.0
#: The pool in the stall: no more connections than psycopg_pool has workers (3), so every
#: connect's retries run in step, and reconnect_timeout at most RESET_TIMEOUT, as W085 asks.
STALL_POOL = {"min_size": 3, "max_size": 3, "timeout": 1.0, "reconnect_timeout": RESET_TIMEOUT}
#: Seconds the server stays silent: the pool's retries, backing off 1, 2 and 4 s after
#: connects that each time out after 2 s, are then in their fourth connect, whose failure
#: (the stall's end resets it) psycopg_pool's default would follow with 8 s of backoff.
STALL = 14.0
#: What recovery may take beyond RESET_TIMEOUT (a half-open trial, a connect, a loaded
#: machine). Before the fix, with psycopg_pool's 300 s reconnect_timeout, it took 7-8 s.
MARGIN = 4.0
#: Seconds between two requests: a steady load, not a wait for anything.
PACE = 0.05
#: The stall test's read keys, one per request, so none is ever answered from the cache.
KEYS = itertools.count()


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


@pytest.fixture
def stalled_provider(settings, redis_cache):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis", "CIRCUITS": {
        "crm.read": {"call_timeout": 2.0, "failure_threshold": 2,
                     "reset_timeout": RESET_TIMEOUT, "max_reset_timeout": RESET_TIMEOUT}}}
    return Provider()


def requests_until(provider: Provider, until: float) -> object:
    """Requests one after another, each its own read, until one is answered by the database
    (its value) or ``until`` (time.monotonic()) passes (``None``)."""
    while time.monotonic() < until:
        with contextlib.suppress(ResilienceError):
            return request(provider, next(KEYS))
        time.sleep(PACE)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("database_behind_proxy", [STALL_POOL], indirect=True)
def test_after_a_stall_the_circuit_recovers_within_its_reset_timeout(
        stalled_provider, database_behind_proxy):
    proxy = database_behind_proxy
    assert request(stalled_provider, -1) == -1  # the breaker seeded, the pool opened
    connections[PROXIED_ALIAS].pool.wait(30)

    proxy.stalled = True  # the server hangs: open connections reset, new ones unanswered
    proxy.drop()
    stalled_until = time.monotonic() + STALL
    assert requests_until(stalled_provider, stalled_until) is None
    assert get_breaker("crm.read").state != core.CLOSED
    proxy.drop()  # the stall ends (the proxy cannot resume what it froze)
    proxy.restore()
    restored = time.monotonic()

    assert requests_until(stalled_provider, restored + 60) is not None
    recovered = time.monotonic() - restored
    assert get_breaker("crm.read").state == core.CLOSED
    assert recovered <= RESET_TIMEOUT + MARGIN, f"the circuit closed {recovered:.1f}s after"
