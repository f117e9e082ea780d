"""Rate limits inside this process: the embedded default without Redis, and each worker's
fallback while Redis is unreachable. Same arithmetic as the Redis store (``gcra.evaluate``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import Limit, Outcome
from resilience_crm.ratelimit.stores.base import BaseLimiterStore

#: Past this many keys, a decision first drops the keys whose bucket is full again; the next
#: sweep waits until the store has grown to twice what the last one kept.
SWEEP_AT = 10_000


class MemoryLimiterStore(BaseLimiterStore):
    shared = False
    checks_in_step = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sweep_at = SWEEP_AT

    def evaluate(self, limits: Sequence[Limit], cost: int = 1,
                 now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        now = int(self._clock() * gcra.US) if now_us is None else now_us
        with self._lock:
            if len(self._tats) > self._sweep_at:
                self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
                self._sweep_at = max(SWEEP_AT, 2 * len(self._tats))
            tats = [self._tats.get(limit.key) for limit in limits]
            allowed, outcomes, new_tats = gcra.evaluate(limits, tats, now, cost)
            for limit, tat in zip(limits, new_tats, strict=True):
                if tat is not None:
                    self._tats[limit.key] = tat
        return allowed, outcomes

    def peek(self, limits: Sequence[Limit], cost: int = 1,
             now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        now = int(self._clock() * gcra.US) if now_us is None else now_us
        with self._lock:
            tats = [self._tats.get(limit.key) for limit in limits]
        allowed, outcomes, _ = gcra.evaluate(limits, tats, now, cost)
        return allowed, outcomes
