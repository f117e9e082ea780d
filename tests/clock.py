"""A clock the test moves by hand, for the breaker's injected ``clock`` and ``monotonic``."""

from __future__ import annotations

from resilience_crm import conf
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.breakers.breaker import Breaker


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker_on(name: str, monotonic: Clock) -> Breaker:
    """The breaker of ``name`` as ``get_breaker`` builds it from the settings, on the
    ``monotonic`` clock that ages its snapshot, in the registry's place: while the test does
    not move the clock the snapshot stays fresh, however slow the machine."""
    base = conf.settings.circuit_config(name)
    breaker = Breaker(name, core.Config.from_mapping(base), registry.get_store(),
                      snapshot_ttl=conf.settings.SNAPSHOT_TTL, monotonic=monotonic,
                      base_config=base)
    registry.swap_breaker(name, breaker)
    return breaker
