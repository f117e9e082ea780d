"""Per-minute call metrics: counted in the process, added to CircuitMetric buckets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import connections
from django.db.models import Max, Sum

from resilience_crm import get_breaker, metrics
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import CircuitMetric
from tests.test_cluster import ctx, run_processes
from tests.test_events import CIRCUIT, database_down  # noqa: F401  (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


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


def test_calls_land_in_the_minute_bucket(settings):
    settings.RESILIENCE_CRM = {"CIRCUITS": {"crm.read": {"failure_threshold": 3}}}
    breaker = get_breaker("crm.read")
    make_calls(breaker, successes=5, failures=3)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never runs")

    assert metrics.flush_buckets() == 1

    row = CircuitMetric.objects.get(circuit__name="crm.read")  # one flush: one bucket
    assert (row.calls, row.successes, row.failures, row.rejected) == (8, 5, 3, 1)
    assert row.bucket.second == row.bucket.microsecond == 0
    assert 0 < row.latency_max_ms <= row.latency_sum_ms


def test_later_flushes_add_to_the_bucket_and_skip_what_was_written():
    breaker = get_breaker("crm.write")
    make_calls(breaker, successes=2)
    metrics.flush_buckets()

    assert metrics.flush_buckets() == 0
    make_calls(breaker, successes=3, failures=1)
    assert metrics.flush_buckets() == 1

    row = totals("crm.write")
    assert (row.calls, row.successes, row.failures) == (6, 5, 1)


def test_a_finished_request_flushes_after_the_interval(client, monkeypatch):
    make_calls(get_breaker("crm.rpc"), successes=4)
    monkeypatch.setattr(metrics, "BUCKET_FLUSH_INTERVAL", 3600)
    client.get("/resilience/health/live")
    assert not CircuitMetric.objects.exists()

    monkeypatch.setattr(metrics, "BUCKET_FLUSH_INTERVAL", 0)
    client.get("/resilience/health/live")

    assert CircuitMetric.objects.get(circuit__name="crm.rpc").successes == 4


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_flushing_together_add_up(postgres):
    """Eight processes create-or-update one bucket at once; no count is lost."""
    barrier = ctx.Barrier(8)
    connections.close_all()

    def worker(index):
        metrics.reset()
        make_calls(get_breaker("crm.auth"), successes=10 + index)
        barrier.wait(timeout=30)
        assert metrics.flush_buckets() == 1
        connections.close_all()

    run_processes(worker, count=8)

    row = totals("crm.auth")
    assert row.successes == row.calls == sum(10 + i for i in range(8))


def test_counts_wait_in_the_process_while_the_database_is_down(database_down, caplog):  # noqa: F811
    make_calls(get_breaker(CIRCUIT), successes=3, failures=1)

    assert metrics.flush_buckets() == 0
    assert "Could not write call metrics" in caplog.text
    database_down.end()
    assert metrics.flush_buckets() == 1

    row = totals(CIRCUIT)
    assert (row.calls, row.successes, row.failures) == (4, 3, 1)
