"""Helpers for projects' own tests (docs/testing.md): :class:`override_circuit`, :func:`reset`
to start each test with nothing the process remembered from another, :func:`set_background`
and :func:`write_now` for suites whose rows live in the test's transaction,
:func:`use_limiter_store` to put the rate limits on a clock the test moves, and
:func:`readers_waiting` for tests of concurrent reads.

    from resilience_crm.testutils import override_circuit

    @override_circuit("crm.read", state="forced_open")
    def test_contacts_page_survives_an_open_circuit(client): ...

Inside the block the circuit runs on a fresh in-process breaker (nothing touches Redis or
the database, nothing leaks into other tests) in the given state, with any breaker
settings given as keyword arguments.
"""

from __future__ import annotations

from contextlib import ContextDecorator
from typing import Any

from resilience_crm import buckets, metrics, receivers
from resilience_crm.breakers import events, machine, registry
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.conf import settings
from resilience_crm.flusher import set_background
from resilience_crm.observability import alerts, health
from resilience_crm.provider import retries, stream
from resilience_crm.provider.facade import Provider, protected
from resilience_crm.ratelimit.limiter import set_store as use_limiter_store

__all__ = ["override_circuit", "readers_waiting", "reset", "set_background", "use_limiter_store",
           "write_now"]


def reset() -> None:
    """Forget what this process remembers between tests: everything built from settings
    (:func:`resilience_crm.receivers.forget_settings`: breakers, limiter, tiers), its counters
    and buffered events, the read cache's local layer and the retry budgets, readiness's rates,
    a remembered store outage, and having seen the write queue empty. Neither Redis nor the
    database is touched (clear those as your tests already do), and no thread is stopped:
    :func:`set_background` ``(False)`` keeps the background writer off."""
    receivers.forget_settings()
    events.clear()
    metrics.reset()
    alerts.store_recovered()
    health.forget_rates()
    protected.cache.forget_local()
    retries.clear_budgets()
    stream.emptiness.forget()


def write_now() -> None:
    """Write the buffered transition events and per-minute metrics now, from this thread, as
    the background writer would; with :func:`set_background` ``(False)``, call it where a test
    expects the ``CircuitEvent`` or ``CircuitMetric`` rows."""
    events.flush()
    buckets.flush_buckets()


def readers_waiting(key: str, provider: Provider = protected) -> int:
    """How many threads of this process wait, right now, for another thread's read of
    ``key`` (identical reads share one call): a test that holds the first read back waits
    for this to reach its count before it lets the read finish, so every thread has joined."""
    return provider.flights.waiting(key)


class override_circuit(ContextDecorator):  # noqa: N801  (used like a function, as in Django)
    def __init__(self, name: str, state: str = machine.CLOSED, **config: Any) -> None:
        if state not in (machine.CLOSED, machine.OPEN, *machine.FORCEABLE):
            raise ValueError(f"override_circuit cannot set {state!r}")
        self.name, self.state, self.config = name, state, config
        self._previous: Breaker | None = None

    def __enter__(self) -> Breaker:
        base = settings.circuit_config(self.name)
        store = MemoryStore()
        breaker = Breaker(self.name, machine.Config.from_mapping(base | self.config), store,
                          snapshot_ttl=settings.SNAPSHOT_TTL, base_config=base)
        # Seeded, not stepped into: no transition is announced, so no event is written.
        seed = machine.new_state() | {"state": self.state, "reason": "override_circuit"}
        if self.state == machine.OPEN:
            seed |= {"until": 2**53, "opened_at": 1, "opens": 1}
        store.seed(self.name, seed)
        self._previous = registry.swap_breaker(self.name, breaker)
        return breaker

    def __exit__(self, *exc: Any) -> None:
        registry.swap_breaker(self.name, self._previous)
