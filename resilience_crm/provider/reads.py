"""The read path: what a read serves, fresh from the cache, refreshed by one process for the
whole cluster, stale while the dependency fails, or the caller's degraded fallback.

A fresh entry is served as it is. A stale one still within ``stale_ttl`` is served while one
process, holding the key's lease, refreshes it (stale-while-revalidate); nobody refreshes
while the circuit is open. With nothing servable cached, the threads of a process reading one
key share one call (:class:`Flights`), and the processes share one through the lease: the
others wait for its holder's result, or its error (:meth:`ReadCache.publish_error
<resilience_crm.provider.cache.ReadCache.publish_error>`). A negative answer (``fn`` raised
something not a :class:`ResilienceError`) is never shared and takes the cached entry away, so
nothing cached stands in for a "no".
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple, TypeGuard

import resilience_crm.provider.cache as cache
import resilience_crm.provider.calls as calls
import resilience_crm.provider.classify as classify
import resilience_crm.provider.deadlines as deadlines
import resilience_crm.provider.labels as labels
import resilience_crm.provider.replicas as replicas
from resilience_crm import metrics
from resilience_crm.breakers import machine
from resilience_crm.breakers.registry import get_breaker
from resilience_crm.exceptions import CircuitOpenError, OperationTimeout, ResilienceError

#: Seconds between looks at the shared cache while another process refreshes a key.
WAIT_POLL_INTERVAL = 0.01


class Served(NamedTuple):
    value: Any
    kind: str | None = None  # None, labels.REPLICA, labels.STALE or labels.DEGRADED
    age: float = 0.0


class Read(NamedTuple):
    """One ``protected.read``: what it asks, under which circuit, how long its answer stays
    fresh and servable, and where it may fall back."""

    key: str
    fn: Callable[[], Any]
    circuit: str
    ttl: float
    stale_ttl: float
    fallback_fn: Callable[[], Any] | None
    using: str | None
    replicas: list[str] | tuple[str, ...] | None = None


class Many(NamedTuple):
    """One ``protected.load_many``: the ids' key space, how to fetch a batch of them, and the
    same circuit, freshness and fallbacks as a :class:`Read`."""

    key: str
    fetch_many: Callable[[list[Any]], Mapping[Any, Any]]
    circuit: str
    ttl: float
    stale_ttl: float
    batch_size: int
    using: str | None
    replicas: list[str] | tuple[str, ...] | None = None
    fallback_fn: Callable[[list[Any]], Mapping[Any, Any]] | None = None


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Served | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class Flights:
    """Reads of one key by several threads of this process at once: the first runs it, the
    others wait for its result or its error (single-flight)."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def run(self, key: str, fn: Callable[[], Served], circuit: str, timeout: float) -> Served:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
        if leader:
            try:
                flight.result = fn()
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                with self._lock:
                    self._flights.pop(key, None)
                flight.done.set()
            return flight.result
        if not flight.done.wait(timeout):
            raise OperationTimeout(circuit=circuit)  # we give up; the leader carries on
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None  # noqa: S101
        return flight.result

    def waiting(self, key: str) -> int:
        """How many threads wait for another's read of ``key`` right now (for tests:
        :func:`resilience_crm.testutils.readers_waiting`)."""
        with self._lock:
            flight = self._flights.get(key)
            return 0 if flight is None else flight.waiters


class Reads(calls.Engine):
    """The read path of :class:`~resilience_crm.provider.facade.Provider`, on its call engine
    and its read cache; the wall clock is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__(monotonic=monotonic, sleep=sleep, rand=rand)
        self.cache = cache.ReadCache(clock, monotonic)
        self.flights = Flights()
        self._clock = clock

    def _read(self, read: Read) -> Served:
        lookup = self.cache.get(read.key)
        entry, now = lookup.entry, self._clock()
        if entry is not None and _fresh(entry, lookup.space_version, read.ttl, now):
            return Served(entry.value)
        if _servable(entry, read.ttl, read.stale_ttl, now):
            return self._revalidate(read, lookup)
        return self.flights.run(read.key, lambda: self._fetch(read, lookup), read.circuit,
                                _budget(read.circuit))

    def _load_many(self, many: Many, ids: Iterable[Hashable]) -> dict[Any, Any]:
        """Cached values first; the rest in batches, each through the read's chain when its
        call fails: a replica's answer for the batch, else each id's stale entry, else the
        caller's fallback for the ids with nothing servable (each labelled)."""
        unique = list(dict.fromkeys(ids))
        keys = {item: f"{many.key}:{item}" for item in unique}
        space = cache.space_of(many.key)
        entries, version = self.cache.get_many(keys.values(), space)
        now = self._clock()
        results: dict[Any, Any] = {}
        for item in unique:
            entry = entries.get(keys[item])
            if entry is not None and _fresh(entry, version, many.ttl, now):
                results[item] = entry.value
        missing = [item for item in unique if item not in results]
        for start in range(0, len(missing), many.batch_size):
            batch = missing[start:start + many.batch_size]
            fetch = partial(many.fetch_many, batch)
            try:
                found = dict(self._call(many.circuit, fetch, many.using, operation=space))
            except ResilienceError as err:
                served = self._from_replica(fetch, many.circuit, space, many.replicas)
                if served is not None:
                    labels.mark(labels.REPLICA, served.age)
                    found = dict(served.value)
                    results.update((item, found[item]) for item in batch if item in found)
                else:
                    results.update(self._many_fallback(err, many, batch, entries, keys, now))
                continue
            self.cache.set_many({keys[item]: value for item, value in found.items()},
                                many.ttl, many.stale_ttl, version)
            results.update((item, found[item]) for item in batch if item in found)
        return results

    def _many_fallback(self, err: ResilienceError, many: Many, batch: list[Any],
                       entries: Mapping[str, cache.Entry], keys: Mapping[Any, str],
                       now: float) -> dict[Any, Any]:
        """A failed batch with no replica to answer: each id's stale entry, and the caller's
        fallback for the ids that have none; ``err`` without a fallback."""
        results: dict[Any, Any] = {}
        bare = []
        for item in batch:
            entry = entries.get(keys[item])
            if _servable(entry, many.ttl, many.stale_ttl, now):
                results[item] = entry.value
                labels.mark(labels.STALE, entry.age(now))
                metrics.inc("calls", circuit=many.circuit, outcome="fallback")
            else:
                bare.append(item)
        if bare:
            if many.fallback_fn is None:
                raise err from err.__cause__
            degraded = dict(many.fallback_fn(bare))
            results.update((item, degraded[item]) for item in bare if item in degraded)
            labels.mark(labels.DEGRADED)
            metrics.inc("calls", circuit=many.circuit, outcome="fallback")
        return results

    def _revalidate(self, read: Read, lookup: cache.Lookup) -> Served:
        """A stale entry is at hand: one process in the cluster refreshes it, the others
        serve it (stale-while-revalidate); nobody refreshes while the circuit is open, when
        a healthy replica answers before the stale entry does."""
        entry, key, circuit = lookup.entry, read.key, read.circuit
        assert entry is not None  # noqa: S101  (the caller checked)
        if _is_open(circuit):  # no refresh while open, and no lease to take for it
            return self._fallback_or_raise(CircuitOpenError(circuit=circuit), entry, read)
        token = uuid.uuid4().hex
        if not self.cache.take_lease(key, token, _budget(circuit)):
            return self._stale(entry, circuit)
        try:
            value = self._call(circuit, read.fn, read.using, operation=cache.space_of(key))
            self.cache.set(key, value, read.ttl, read.stale_ttl, lookup)
        except ResilienceError as err:
            return self._fallback_or_raise(err, entry, read)
        except Exception:  # a negative answer: the stale entry must not stand in for it
            self.cache.remove(key)
            raise
        finally:  # after the result is stored, so nobody sees neither lease nor result
            self.cache.release_lease(key, token)
        return Served(value)

    def _fetch(self, read: Read, lookup: cache.Lookup) -> Served:
        """Nothing servable is cached: the one process holding the lease queries, the others
        wait for its result or its error (after a negative answer, which is not shared,
        they ask ``fn`` themselves)."""
        key, circuit, ttl = read.key, read.circuit, read.ttl
        if _is_open(circuit):  # fail fast: the breaker answers, no lease needed
            try:
                value = self._call(circuit, read.fn, read.using, operation=cache.space_of(key))
            except ResilienceError as err:
                return self._fallback_or_raise(err, None, read)
            self.cache.set(key, value, ttl, read.stale_ttl, lookup)
            return Served(value)
        token = uuid.uuid4().hex
        leader = self.cache.take_lease(key, token, _budget(circuit))
        if not leader:
            try:
                waited = self._await_leader(key, circuit, ttl)
            except ResilienceError as err:
                return self._fallback_or_raise(err, None, read)
            if waited is not None:
                return waited
            leader = self.cache.take_lease(key, token, _budget(circuit))
        try:
            if leader:  # the previous leader may have stored its result just before
                done = self.cache.get_shared(key)
                if done.entry is not None and _fresh(done.entry, done.space_version, ttl,
                                                     self._clock()):
                    return Served(done.entry.value)
            value = self._call(circuit, read.fn, read.using, operation=cache.space_of(key))
            self.cache.set(key, value, ttl, read.stale_ttl, lookup)
        except ResilienceError as err:
            if leader:
                self.cache.publish_error(key, err.code, err.message, err.retry_after)
            return self._fallback_or_raise(err, None, read)
        except Exception:  # a negative answer: what was cached must not stand in for it
            if lookup.entry is not None:  # (a never-cached key leaves nothing behind)
                self.cache.remove(key)
            raise
        finally:  # after the result is stored, so nobody sees neither lease nor result
            if leader:
                self.cache.release_lease(key, token)
        return Served(value)

    def _await_leader(self, key: str, circuit: str, ttl: float) -> Served | None:
        """The leader's value, its error raised, or ``None`` when it vanished (its lease
        expired or was released without a result) or took longer than our deadline."""
        since = self._clock()
        deadline = deadlines.Deadline(_budget(circuit), self._monotonic)
        while not deadline.expired:
            self._sleep(WAIT_POLL_INTERVAL)
            lookup = self.cache.get_shared(key)
            entry = lookup.entry
            if entry is not None and _fresh(entry, lookup.space_version, ttl, self._clock()):
                return Served(entry.value)
            error = self.cache.get_error(key, since)
            if error is not None:
                raise classify.rebuild(error, circuit)
            if not self.cache.lease_held(key):
                return None
        raise OperationTimeout(circuit=circuit)

    def _fallback_or_raise(self, err: ResilienceError, entry: cache.Entry | None,
                           read: Read) -> Served:
        """The primary failed: a healthy replica's answer, else the stale entry, else the
        caller's fallback, else ``err``."""
        served = self._from_replica(read.fn, read.circuit, cache.space_of(read.key),
                                    read.replicas)
        if served is not None:
            return served
        if _servable(entry, read.ttl, read.stale_ttl, self._clock()):
            return self._stale(entry, read.circuit)
        if read.fallback_fn is not None:
            metrics.inc("calls", circuit=read.circuit, outcome="fallback")
            return Served(read.fallback_fn(), labels.DEGRADED)
        raise err

    def _from_replica(self, fn: Callable[[], Any], primary_circuit: str, space: str,
                      aliases: list[str] | tuple[str, ...] | None) -> Served | None:
        """``fn()`` on the first of ``aliases`` (default ``READ_REPLICAS``) close enough
        behind its primary that answers, each under its own circuit; ``None`` when none does.
        Its answer is not cached: it is labelled, with its lag as its age, and the next read
        asks the primary again."""
        for alias in replicas.candidates(aliases):
            circuit = replicas.circuit_of(alias)
            try:
                with replicas.reading(alias):
                    lag = self._call(circuit, partial(replicas.checked, alias), alias,
                                     operation=space)
                    value = self._call(circuit, fn, alias, operation=space)
            except replicas.TooFarBehind:
                continue
            except ResilienceError:
                continue
            metrics.inc("calls", circuit=primary_circuit, outcome="fallback")
            return Served(value, labels.REPLICA, lag)
        return None

    def _stale(self, entry: cache.Entry, circuit: str) -> Served:
        metrics.inc("calls", circuit=circuit, outcome="fallback")
        return Served(entry.value, labels.STALE, entry.age(self._clock()))


def _fresh(entry: cache.Entry, space_version: int, ttl: float, now: float) -> bool:
    return entry.space_version == space_version and entry.age(now) < ttl


def _servable(entry: cache.Entry | None, ttl: float, stale_ttl: float,
              now: float) -> TypeGuard[cache.Entry]:
    """Fresh, or stale by less than ``stale_ttl``: an entry a read may still serve."""
    return entry is not None and entry.age(now) < ttl + stale_ttl


def _budget(circuit: str) -> float:
    return float(get_breaker(circuit).config.call_timeout)


def _is_open(circuit: str) -> bool:
    """This worker's view (no I/O while it is fresh) says the circuit rejects calls."""
    return get_breaker(circuit).state in machine.REJECTING
