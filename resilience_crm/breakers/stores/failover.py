"""The shared store as a worker uses it: when it fails, this process's own breakers stand in.

Every failure of the shared store, whatever it is (Redis unreachable or stalled, an error
reply such as BUSY, MISCONF or WRONGTYPE, a malformed value, a database error), marks it
down for ``retry_interval`` seconds for every circuit of this process in the same shard
(:meth:`~resilience_crm.breakers.stores.base.BaseStore.shard`: the whole store, or on Redis
Cluster the master serving the circuit's slot), is counted in ``store_errors`` and logged
once per outage. Meanwhile each such circuit steps a per-process
:class:`~resilience_crm.breakers.stores.memory.MemoryStore`, seeded from the last state this process
saw in the shared store. Its transitions are marked ``local`` in the results, so they are
announced as a worker's own and never in the cluster's name. After the interval one caller
tries the shared store again while the others stay local; the first step that succeeds
ends the shard's outage, drops its circuits' local states and sends
:data:`~resilience_crm.signals.shared_store_recovered`. When a Redis Cluster master fails
over, its circuits' slots move to the promoted replica, a shard that answers: they are
back on the shared store as soon as the client has learnt the new layout.

When the shared store has lost a circuit (a key evicted or expired, Redis restarted or
flushed), the circuit is seeded from its durable record before it is stepped, so
generations go on above the last one written and a saved forced state holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from resilience_crm import metrics
from resilience_crm.breakers.stores.base import BaseStore, StateMissing, Step
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.signals import shared_store_recovered

logger = logging.getLogger("resilience_crm.stores")

#: What a local breaker takes over from the last shared state it saw.
CARRIED = ("state", "gen", "until", "opened_at")


class FailoverStore(BaseStore):
    shared = True

    def __init__(
        self,
        primary: BaseStore,
        *,
        retry_interval: float = 5.0,
        seed: Callable[[str], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.retry_interval = retry_interval
        self._seed = seed
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._local = MemoryStore(clock=clock)
        self._last: dict[str, dict[str, Any]] = {}
        self._down: set[str] = set()  # shards that failed, until one step there succeeds
        self._retry_at: dict[str, float] = {}
        self._local_shard: dict[str, str] = {}  # circuits stepped locally, and their shard

    def __repr__(self) -> str:
        return f"<FailoverStore {self.primary!r}{' down' if self._down else ''}>"

    @property
    def available(self) -> bool:
        """Whether every shard of the shared store answered the last time it was asked."""
        return not self._down

    def step(self, step: Step) -> dict[str, Any]:
        """A step on the shared store, or on this process's own one while the shared store is
        down (``result["local"]`` says which). With ``step.shared_only`` a failure raises
        :class:`StoreUnavailable` instead: for changes that must reach every worker."""
        shard = self.primary.shard(step.name)
        if step.shared_only or self._try_shared(shard):
            try:
                result = self._step_shared(step)
            except Exception as err:  # any failure of the store degrades; none escapes
                self._failed(step.name, shard, err)
                if step.shared_only:
                    raise StoreUnavailable(circuit=step.name) from err
            else:
                self._succeeded(step.name, shard, result)
                return result
        with self._lock:
            carried = self._last.get(step.name)
            self._local_shard[step.name] = shard
        result = self._local.step(step._replace(seed=carried))
        result["local"] = True
        return result

    def read(self, name: str) -> dict[str, Any] | None:
        """The stored state without stepping it; this process's own while its shard is
        down."""
        shard = self.primary.shard(name)
        if shard not in self._down:
            try:
                return self.primary.read(name)
            except Exception as err:  # degrade, as a step would
                self._failed(name, shard, err)
        return self._local.read(name) or self._last.get(name)

    def clear(self, name: str) -> None:
        self.primary.clear(name)
        self._local.clear(name)

    # Internals.

    def _try_shared(self, shard: str) -> bool:
        """Whether this call asks the shared store: always while the circuit's shard is up;
        while it is down, one call per ``retry_interval``, so the others do not wait on it
        too."""
        if shard not in self._down:
            return True
        with self._lock:
            now = self._monotonic()
            if now < self._retry_at.get(shard, 0.0):
                return False
            self._retry_at[shard] = now + self.retry_interval
        logger.info("Trying the shared store %r again%s.", self.primary, _on(shard))
        return True

    def _step_shared(self, step: Step) -> dict[str, Any]:
        if self._seed is None:
            return self.primary.step(step)
        try:
            return self.primary.step(step._replace(require_state=True))
        except StateMissing:
            name = step.name
            seed = dict(self._seed(name))
            with self._lock:
                seen = self._last.get(name, {}).get("gen", 0)
            seed["gen"] = max(seed.get("gen", 0), seen)
            # A circuit that never moved is new to the store, not lost by it.
            lost = seed["gen"] or seed.get("state", "closed") != "closed" or seed.get("cv")
            logger.log(logging.WARNING if lost else logging.INFO,
                       "Circuit %s: the shared store had no state for it; seeded from its "
                       "durable record at generation %s (%s).", name, seed["gen"],
                       seed.get("state", "closed"))
            return self.primary.step(step._replace(seed=seed))

    def _failed(self, name: str, shard: str, err: Exception) -> None:
        metrics.inc("store_errors", circuit=name)
        with self._lock:
            self._retry_at[shard] = self._monotonic() + self.retry_interval
            if shard in self._down:
                return
            self._down.add(shard)
        cause = err.__cause__ or err
        logger.warning(
            "The shared store is unavailable%s (%s: %s; noticed by circuit %s): this worker's "
            "circuits there use breakers of their own, and try it again every %.1fs.",
            _on(shard), type(cause).__name__, cause, name, self.retry_interval,
        )

    def _succeeded(self, name: str, shard: str, result: Mapping[str, Any]) -> None:
        with self._lock:
            self._last[name] = {field: result[field] for field in CARRIED}
            # A failover moves a slot to another master: the shard the circuit was down on
            # is then gone, and answering on the new one ends its outage too.
            moved_from = self._local_shard.get(name, shard)
            ended = {shard, moved_from} & self._down
            recovered = bool(ended)
            self._down -= ended
            self._retry_at.pop(shard, None)
            # The local states of the circuits of the shards back, and of this circuit.
            for local in [circuit for circuit, where in self._local_shard.items()
                          if circuit == name or where in ended]:
                del self._local_shard[local]
                self._local.clear(local)
        if recovered:
            logger.info("The shared store %r answers again%s; circuits are back on it.",
                        self.primary, _on(shard))
            for receiver, response in shared_store_recovered.send_robust(sender=FailoverStore,
                                                                           store=self):
                if isinstance(response, Exception):
                    logger.error("shared_store_recovered receiver %r failed", receiver,
                                 exc_info=(type(response), response, response.__traceback__))


def _on(shard: str) -> str:
    """`` on <shard>`` for the log, nothing for a store in one piece."""
    return f" on {shard}" if shard else ""
