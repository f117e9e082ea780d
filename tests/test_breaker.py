"""The per-process breaker in front of a store: hot path, snapshots, fallback, exceptions."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

from resilience_crm import metrics
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import SUCCESS_BATCH, Breaker
from resilience_crm.breakers.stores.base import Step
from resilience_crm.breakers.stores.failover import FailoverStore
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.exceptions import CircuitOpenError, StoreUnavailable
from resilience_crm.signals import circuit_transition
from tests.clock import Clock


class CountingStore(MemoryStore):
    """A memory store that counts the steps it is asked for."""

    def __init__(self, clock) -> None:
        super().__init__(clock=clock)
        self.steps = 0
        self.down = False

    def step(self, step):
        self.steps += 1
        if self.down:
            raise StoreUnavailable("down for the test")
        return super().step(step)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    return CountingStore(clock)


def make_breaker(store, clock, **config) -> Breaker:
    base = {"failure_threshold": 3, "failure_rate_threshold": 0, "reset_timeout": 10,
            "max_reset_timeout": 60}
    return Breaker("test.circuit", core.Config.from_mapping(base | config), store,
                   snapshot_ttl=0.5, clock=clock, monotonic=clock,
                   rand=lambda: 0.5)


def boom():
    raise ValueError("backend error")


@pytest.fixture
def transitions():
    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    circuit_transition.connect(receiver, weak=False)
    yield seen
    circuit_transition.disconnect(receiver)


def test_closed_breaker_with_fresh_snapshot_makes_no_store_call(store, clock):
    breaker = make_breaker(store, clock)
    assert breaker.call(lambda: 1) == 1  # the first call fetches the snapshot
    assert store.steps == 1
    for _ in range(SUCCESS_BATCH - 2):
        breaker.call(lambda: 1)
    assert store.steps == 1
    clock.now += 0.6  # the snapshot goes stale: one step refreshes it and sends the successes
    breaker.call(lambda: 1)
    assert store.steps == 2
    assert breaker.snapshot()["calls"] == SUCCESS_BATCH


def test_successes_flush_in_batches(store, clock):
    breaker = make_breaker(store, clock)
    for _ in range(SUCCESS_BATCH):
        breaker.call(lambda: 1)
    assert store.steps == 2  # first fetch + one batch
    assert store.step(Step("test.circuit", breaker._step_config, 0.5))["calls"] == SUCCESS_BATCH


def test_successes_counted_by_many_threads_reach_the_store_exactly(store, clock,
                                                                   monkeypatch):
    """Threads count without a lock while others take full batches: none lost, none twice."""
    import resilience_crm.breakers.breaker as breaker_module

    monkeypatch.setattr(breaker_module, "SUCCESS_BATCH", 997)
    breaker = make_breaker(store, clock)
    breaker.call(lambda: 1)
    start = threading.Barrier(4)

    def calls() -> None:
        start.wait()
        for _ in range(20_000):
            breaker.call(lambda: 1)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.steps > 50  # the batches were taken while the threads counted
    clock.now += 0.6
    breaker.call(lambda: 1)
    assert breaker.snapshot()["calls"] == 80_002


def test_failures_are_recorded_at_once_and_trip(store, clock, transitions):
    breaker = make_breaker(store, clock)
    for _ in range(3):
        with pytest.raises(ValueError):
            breaker.call(boom)
    assert breaker.state == core.OPEN
    assert [(t["from_state"], t["to_state"], t["generation"]) for t in transitions] == [
        ("closed", "open", 1)
    ]
    steps = store.steps
    with pytest.raises(CircuitOpenError) as caught:
        breaker.call(lambda: 1)
    assert store.steps == steps  # rejected locally
    assert caught.value.code == "CIRCUIT_OPEN"
    assert caught.value.retry_after == pytest.approx(10)


def test_recovers_through_half_open(store, clock, transitions):
    breaker = make_breaker(store, clock, failure_threshold=1)
    with pytest.raises(ValueError):
        breaker.call(boom)
    clock.now += 10
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == core.CLOSED
    assert [t["to_state"] for t in transitions] == ["open", "half_open", "closed"]


def test_ignored_exceptions_do_not_count(store, clock):
    breaker = make_breaker(store, clock, failure_threshold=1,
                           ignore_exceptions=["builtins.KeyError"])
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert breaker.state == core.CLOSED


def test_record_exceptions_limit_what_counts(store, clock):
    breaker = make_breaker(store, clock, failure_threshold=1,
                           record_exceptions=["builtins.ConnectionError"])
    with pytest.raises(ValueError):
        breaker.call(boom)
    assert breaker.state == core.CLOSED
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    assert breaker.state == core.OPEN


def test_slow_calls_are_recorded(store, clock):
    breaker = make_breaker(store, clock, failure_threshold=0, slow_call_duration=1,
                           slow_call_rate_threshold=1, minimum_calls=2)

    def slow():
        clock.now += 2
        return "late"

    breaker.call(slow)
    breaker.call(slow)
    assert breaker.snapshot()["state"] == core.OPEN


def test_force_and_reset_carry_the_actor(store, clock, transitions):
    breaker = make_breaker(store, clock)
    breaker.force(core.FORCED_OPEN, actor="ann", reason="maintenance",
                  until=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    breaker.reset(actor="bob")
    assert breaker.call(lambda: 1) == 1
    assert [(t["to_state"], t["actor"], t["reason"]) for t in transitions] == [
        (core.FORCED_OPEN, "ann", "maintenance"), (core.CLOSED, "bob", "reset")]


def test_force_rejects_unknown_states(store, clock):
    with pytest.raises(ValueError, match="half_open"):
        make_breaker(store, clock).force(core.HALF_OPEN)


def test_disabled_circuit_records_nothing(store, clock):
    breaker = make_breaker(store, clock)
    breaker.force(core.DISABLED)
    steps = store.steps
    for _ in range(10):
        with pytest.raises(ValueError):
            breaker.call(boom)
    assert store.steps == steps


def test_a_store_outage_falls_back_to_a_local_breaker(store, clock, caplog):
    failover = FailoverStore(store, retry_interval=5, clock=clock, monotonic=clock)
    breaker = make_breaker(failover, clock, failure_threshold=2)
    breaker.call(lambda: 1)
    store.down = True
    clock.now += 1
    errors = metrics.value("store_errors", circuit="test.circuit")
    with caplog.at_level(logging.WARNING, logger="resilience_crm.stores"):
        for _ in range(2):
            with pytest.raises(ValueError):
                breaker.call(boom)
    assert "shared store is unavailable" in caplog.text
    assert breaker.snapshot()["store"] == "local"
    # The local breaker still protects: it opened on its own.
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    # The shared store was asked once; the next try waits for the retry interval.
    assert metrics.value("store_errors", circuit="test.circuit") == errors + 1
    store.down = False
    clock.now += 5
    assert breaker.snapshot()["store"] == "shared"


def test_configure_hands_overrides_to_every_breaker_on_the_store(store, clock):
    first, second = make_breaker(store, clock), make_breaker(store, clock)
    second.state  # noqa: B018  (a fresh view from before the change)
    first.configure({"failure_threshold": 1})
    assert first.config.failure_threshold == 1
    assert second.config.failure_threshold == 3  # its view is still fresh
    clock.now += 0.6
    with pytest.raises(ValueError):
        second.call(boom)
    assert second.config.failure_threshold == 1
    assert second.state == core.OPEN


def test_configure_rejects_invalid_overrides(store, clock):
    breaker = make_breaker(store, clock)
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        breaker.configure({"failure_rate_threshold": 2})
    assert breaker.config.failure_rate_threshold == 0
