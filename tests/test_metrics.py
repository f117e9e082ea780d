"""Per-minute call metrics: counted in the process, under the minute of the call, added to
CircuitMetric buckets by the flusher (or ``buckets.flush_buckets()``)."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from django.db import connections
from django.db.models import Max, Sum

from resilience_crm import buckets, flusher, get_breaker, metrics
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import CircuitMetric
from tests.clock import Clock
from tests.processes import ctx, run_processes
from tests.waiting import wait_until

# "resilience": the second alias of the test database, for the ``database_down`` test.
# The buckets are counted exactly: without the query guard's counts of the test's statements.
pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "resilience"]),
              pytest.mark.usefixtures("unguarded")]

CIRCUIT = "test.metrics"


def boom():
    raise ConnectionError("the dependency is down")


def totals(circuit):
    """Summed over buckets: a test may straddle the turn of a minute."""
    rows = CircuitMetric.objects.filter(circuit__name=circuit)
    fields = ["calls", "successes", "failures", "rejected", "latency_sum_ms"]
    sums = rows.aggregate(**{f: Sum(f) for f in fields}, latency_max_ms=Max("latency_max_ms"))
    return SimpleNamespace(**sums)


def make_calls(breaker, successes=0, failures=0):
    for _ in range(successes):
        breaker.call(lambda: "ok")
    for _ in range(failures):
        with pytest.raises(ConnectionError):
            breaker.call(boom)


@pytest.fixture
def clock(monkeypatch):
    """The wall clock that decides a call's minute; 1_700_000_000 is 22:13:20 UTC."""
    clock = Clock()
    monkeypatch.setattr(metrics, "clock", clock)
    return clock


def test_calls_land_in_the_minute_bucket(settings):
    settings.RESILIENCE_CRM = {"CIRCUITS": {"crm.read": {"failure_threshold": 3}}}
    breaker = get_breaker("crm.read")
    make_calls(breaker, successes=5, failures=3)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never runs")

    assert buckets.flush_buckets() == 1

    row = CircuitMetric.objects.get(circuit__name="crm.read")  # one flush: one bucket
    assert (row.calls, row.successes, row.failures, row.rejected) == (8, 5, 3, 1)
    assert row.bucket.second == row.bucket.microsecond == 0
    assert 0 < row.latency_max_ms <= row.latency_sum_ms


def test_later_flushes_add_to_the_bucket_and_skip_what_was_written():
    breaker = get_breaker("crm.write")
    make_calls(breaker, successes=2)
    buckets.flush_buckets()

    assert buckets.flush_buckets() == 0
    make_calls(breaker, successes=3, failures=1)
    assert buckets.flush_buckets() == 1

    row = totals("crm.write")
    assert (row.calls, row.successes, row.failures) == (6, 5, 1)


def test_a_bucket_carries_the_minute_of_the_call_not_of_the_flush(clock):
    breaker = get_breaker("crm.read")
    make_calls(breaker, successes=3)
    clock.now += 120  # two minutes later, before any flush
    make_calls(breaker, successes=2, failures=1)
    clock.now += 600

    assert buckets.flush_buckets() == 2

    rows = list(CircuitMetric.objects.filter(circuit__name="crm.read").order_by("bucket")
                .values_list("bucket", "successes", "failures"))
    assert rows == [(datetime(2023, 11, 14, 22, 13, tzinfo=UTC), 3, 0),
                    (datetime(2023, 11, 14, 22, 15, tzinfo=UTC), 2, 1)]
    assert metrics.value("calls", circuit="crm.read", outcome="success") == 5


def test_the_slowest_call_of_each_minute_is_kept(clock):
    key = metrics.key("latency_us", circuit=CIRCUIT)
    metrics.observe_latency(key, 0.2)
    metrics.observe_latency(key, 0.05)
    metrics.add(metrics.key("calls", circuit=CIRCUIT, outcome="success"), 2)
    buckets.flush_buckets()
    metrics.observe_latency(key, 0.1)  # same minute, slower than nothing written
    metrics.add(metrics.key("calls", circuit=CIRCUIT, outcome="success"))
    buckets.flush_buckets()

    row = CircuitMetric.objects.get(circuit__name=CIRCUIT)
    assert row.successes == 3
    assert row.latency_max_ms == pytest.approx(200)
    assert row.latency_sum_ms == pytest.approx(350)


def test_threads_lose_no_increments(settings, clock):
    """Eight threads count while the minute turns under them and another thread flushes and
    folds old minutes away, all switching every microsecond: every count lands once. Halfway
    the counting threads wait for the flusher to have written twice, so it flushes while they
    count however fast they count."""
    settings.RESILIENCE_CRM = {"STORE": "memory"}  # the threads need no connection of their own
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads + 1)
    counting, flushed = threading.Event(), threading.Event()
    breaker = get_breaker("crm.rpc")
    counter = metrics.key("hits", circuit=CIRCUIT)
    flushes = []

    def count():
        start.wait(timeout=30)
        for n in range(per_thread):
            if n == per_thread // 2:
                assert flushed.wait(timeout=30), "the flusher wrote nothing in 30 s"
            metrics.add(counter)
            breaker.call(lambda: "ok")

    def flush_while_counting():
        start.wait(timeout=30)
        while counting.is_set():
            clock.now += 20  # a new minute every third pass
            flushes.append(buckets.flush_buckets())
            if sum(flushes) > 1:
                flushed.set()
        connections.close_all()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    counting.set()
    try:
        workers = [threading.Thread(target=count) for _ in range(threads)]
        flushing = threading.Thread(target=flush_while_counting)
        for worker in [*workers, flushing]:
            worker.start()
        for worker in workers:
            worker.join()
        counting.clear()
        flushing.join()
    finally:
        sys.setswitchinterval(previous)
    buckets.flush_buckets()

    total = threads * per_thread
    assert len(flushes) > 1 and sum(flushes) > 1  # it did flush while they counted
    assert metrics.value("hits", circuit=CIRCUIT) == total
    assert metrics.value("calls", circuit="crm.rpc", outcome="success") == total
    assert CircuitMetric.objects.filter(circuit__name="crm.rpc").count() > 1  # minutes turned
    row = totals("crm.rpc")
    assert row.successes == row.calls == total


def test_the_background_flusher_writes_the_buckets_every_interval(background_flusher,
                                                                   monkeypatch):
    monkeypatch.setattr(flusher, "INTERVAL", 0.05)
    make_calls(get_breaker("crm.rpc"), successes=4)

    wait_until(lambda: CircuitMetric.objects.filter(circuit__name="crm.rpc",
                                                    successes=4).exists(),
               "the flusher wrote the bucket")


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_flushing_together_add_up(postgres):
    """Eight processes create-or-update one bucket at once; no count is lost."""
    barrier = ctx.Barrier(8)
    connections.close_all()

    def worker(index):
        make_calls(get_breaker("crm.auth"), successes=10 + index)
        barrier.wait(timeout=30)
        assert buckets.flush_buckets() == 1
        connections.close_all()

    run_processes(worker, count=8)

    row = totals("crm.auth")
    assert row.successes == row.calls == sum(10 + i for i in range(8))


def test_counts_wait_in_the_process_while_the_database_is_down(database_down, caplog):
    make_calls(get_breaker("crm.read"), successes=3, failures=1)

    assert buckets.flush_buckets() == 0
    assert "Could not write call metrics" in caplog.text
    database_down.end()
    assert buckets.flush_buckets() == 1

    row = totals("crm.read")
    assert (row.calls, row.successes, row.failures) == (4, 3, 1)


def test_minutes_kept_while_the_database_is_down_are_bounded(database_down, clock,
                                                              monkeypatch, caplog):
    monkeypatch.setattr(metrics, "MAX_MINUTES", 3)
    breaker = get_breaker("crm.read")
    for _ in range(6):  # six minutes with calls, none of them written
        make_calls(breaker, successes=1)
        clock.now += 60
        assert buckets.flush_buckets() == 0

    dropped = [r for r in caplog.records if r.getMessage().startswith("Dropped the unwritten")]
    assert len(dropped) == 3  # the three oldest; the three newest wait
    assert metrics.value("metric_minutes_dropped") == 3
    assert metrics.value("calls", circuit="crm.read", outcome="success") == 6  # totals keep all

    database_down.end()
    assert buckets.flush_buckets() == 3
    assert totals("crm.read").successes == 3
