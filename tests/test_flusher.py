"""The background flusher: requests never wait on a database known to be down, and a forked
worker starts with nothing of its parent's (buffers, counters, locks, thread).

The database is taken away for real: the app's tables go through ``tests/proxy.py`` in
front of the real PostgreSQL, which the test stalls (connections accepted, never answered).
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections

from resilience_crm import buckets, flusher, get_breaker, metrics
from resilience_crm.breakers import events
from resilience_crm.models import CircuitEvent, CircuitMetric
from tests.databases import APP_ALIAS
from tests.failing import churn
from tests.processes import run_processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CIRCUIT = "test.flusher"
REQUESTS = 200
#: Seconds the flusher's connection attempts wait on the blackholed database in the test:
#: a request that waited on one would take that long. How fast /live answers meanwhile
#: (p99 under 50 ms) is measured by bench/live_blackholed.py (docs/benchmarks.md), away
#: from a test run's load.
STALLED_CONNECT = 60


@pytest.fixture(autouse=True)
def _circuit(settings):
    settings.RESILIENCE_CRM = {
        "STORE": "memory",
        "CIRCUITS": {CIRCUIT: {"failure_threshold": 2, "failure_rate_threshold": 0,
                               "reset_timeout": 60}},
    }



@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic"])
def test_live_answers_at_once_while_the_database_is_blackholed(
    postgres_proxy, background_flusher, client, atomic_requests
):
    connections.settings[APP_ALIAS]["ATOMIC_REQUESTS"] = atomic_requests
    breaker = get_breaker(CIRCUIT)  # reads its overrides while the database still answers
    connections[APP_ALIAS].close()  # as after every request (CONN_MAX_AGE = 0)
    # The flusher's attempt stays stuck for the whole run, not for the fixture's 2 s.
    connections.settings[APP_ALIAS]["OPTIONS"]["connect_timeout"] = STALLED_CONNECT
    postgres_proxy.stalled = True
    before = postgres_proxy.connections
    producing = threading.Event()
    producing.set()

    def produce():
        while producing.is_set():
            churn(breaker)
            time.sleep(0.005)  # pacing the load, not synchronisation

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: postgres_proxy.connections > before, "the flusher tried the database")
        started = time.monotonic()
        for _ in range(REQUESTS):
            assert client.get("/resilience/health/live").status_code == 200
        elapsed = time.monotonic() - started
    finally:
        producing.clear()
        producer.join()
    # Every request answered while the flusher's attempt, begun before them, was still stuck:
    # none waited for it.
    assert elapsed < STALLED_CONNECT
    # It was real: events and counts wait in the process for the database.
    assert events.pending_count() > 0
    assert metrics.value("calls", circuit=CIRCUIT, outcome="success") > 0
    assert not CircuitEvent.objects.using("default").filter(circuit__name=CIRCUIT).exists()
    postgres_proxy.drop()  # the flusher's attempt in progress fails at once


def test_a_forked_child_starts_empty_and_never_waits_on_its_parents_locks(postgres_proxy):
    """At the fork, one parent thread is writing events and another metrics, both stuck on
    the stalled database while they hold the writers' locks. The child must not inherit the
    buffer, the counts or those locks: it writes its own events and metrics at once."""
    breaker = get_breaker(CIRCUIT)
    churn(breaker)
    assert events.pending_count() == 2
    assert metrics.value("calls", circuit=CIRCUIT, outcome="success") == 5
    connections.close_all()  # the child must not share this thread's connections
    # Stuck for good (until the proxy cuts them), not for the fixture's 2 s connect timeout.
    connections.settings[APP_ALIAS]["OPTIONS"]["connect_timeout"] = 60
    postgres_proxy.stalled = True
    before = postgres_proxy.connections
    stuck = [threading.Thread(target=events.flush, kwargs={"timeout": 60}),
             threading.Thread(target=buckets.flush_buckets)]
    for thread in stuck:
        thread.start()
    wait_until(lambda: postgres_proxy.connections >= before + 2,
               "both writers are stuck connecting")
    real = connections.settings["default"]

    def child(index):
        assert events.pending_count() == 0
        assert metrics.collect() == []
        # The database answers the child: its own copy of the alias goes around the proxy.
        connections.settings[APP_ALIAS].update(HOST=real["HOST"], PORT=real["PORT"])
        mine = get_breaker(CIRCUIT)
        churn(mine)
        assert events.flush(timeout=10) == 2
        assert buckets.flush_buckets() == 1
        flusher.set_background(True)  # and a thread of its own, started on first need
        churn(mine)
        wait_until(lambda: events.pending_count() == 0, "the child's flusher wrote")
        assert flusher.stop()
        buckets.flush_buckets()
        connections.close_all()

    run_processes(child, count=1)

    assert events.pending_count() == 2  # the parent's, still waiting for the database
    assert CircuitEvent.objects.using("default").filter(circuit__name=CIRCUIT).count() == 4
    row = CircuitMetric.objects.using("default").get(circuit__name=CIRCUIT)
    assert row.successes == 10  # the child's; not the parent's five, nothing twice
    postgres_proxy.drop()
    for thread in stuck:
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_one_flusher_thread_per_process_however_many_threads_wake_it(background_flusher):
    threads = 16
    start = threading.Barrier(threads)

    def wake():
        start.wait(timeout=30)
        for _ in range(100):
            flusher.wake()

    wakers = [threading.Thread(target=wake) for _ in range(threads)]
    for waker in wakers:
        waker.start()
    for waker in wakers:
        waker.join()

    running = [t for t in threading.enumerate() if t.name == "resilience-flusher"]
    assert len(running) == 1
