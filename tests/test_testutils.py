import pytest

from resilience_crm import get_breaker, metrics
from resilience_crm.breakers import machine as core
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import CircuitEvent, CircuitMetric
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore
from resilience_crm.testutils import override_circuit, reset, use_limiter_store, write_now


@pytest.mark.django_db  # the real breaker after the block uses the database store
@pytest.mark.parametrize("state", [core.OPEN, core.FORCED_OPEN])
def test_open_overrides_reject_calls(state):
    with override_circuit("crm.read", state=state), pytest.raises(CircuitOpenError):
        get_breaker("crm.read").call(lambda: 1)
    assert get_breaker("crm.read").call(lambda: 1) == 1


def test_decorator_form_and_config():
    @override_circuit("crm.rpc", failure_threshold=1)
    def check():
        breaker = get_breaker("crm.rpc")
        with pytest.raises(ValueError):
            breaker.call(lambda: (_ for _ in ()).throw(ValueError()))
        return breaker.state

    assert check() == core.OPEN


def test_rejects_states_it_cannot_set():
    with pytest.raises(ValueError):
        override_circuit("crm.read", state="half_open")


@pytest.mark.django_db
@pytest.mark.usefixtures("unguarded")  # every counter is asked for: none of the guard's
def test_reset_forgets_what_the_process_remembered():
    breaker = get_breaker("crm.read")
    store = MemoryLimiterStore()
    use_limiter_store(store)
    metrics.inc("ratelimit_store_errors")
    assert get_breaker("crm.read") is breaker and limiter.get_store() is store
    assert metrics.collect()

    reset()

    assert get_breaker("crm.read") is not breaker
    assert limiter.get_store() is not store
    assert metrics.collect() == []


@pytest.mark.django_db
def test_write_now_writes_the_buffered_events_and_metrics():
    """The suite's background writer is off (conftest): rows appear only when asked for."""
    breaker = get_breaker("crm.read")
    breaker.force(core.FORCED_OPEN, reason="drill")
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    assert not CircuitEvent.objects.exists() and not CircuitMetric.objects.exists()

    write_now()

    assert list(CircuitEvent.objects.values_list("to_state", flat=True)) == [core.FORCED_OPEN]
    assert CircuitMetric.objects.filter(circuit__name="crm.read", rejected=1).exists()
