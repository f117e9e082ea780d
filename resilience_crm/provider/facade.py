"""``protected``: data access that keeps working, or fails fast and clearly, while the
database or an upstream is slow, flapping or gone.

Every operation runs ``fn`` under its circuit's breaker and deadline (``call_timeout``),
retries transient errors within that deadline, and counts the outcome. Reads add the
fallback chain: fresh cache, bounded stale cache, the caller's degraded ``fallback``, then
the problem (see DESIGN.md). Writes invalidate their key space; ``submit`` applies a
registered write now or queues it (``resilience_crm.provider.queue``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple, TypeVar

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Model

import resilience_crm.provider.classify as classify
import resilience_crm.provider.deadlines as deadlines
import resilience_crm.provider.queue as queue
import resilience_crm.provider.reads as reads
import resilience_crm.provider.retries as retries
from resilience_crm import metrics
from resilience_crm.breakers import machine
from resilience_crm.breakers.registry import get_breaker
from resilience_crm.conf import settings
from resilience_crm.constants import OP_CIRCUITS
from resilience_crm.exceptions import (
    CircuitOpenError,
    OperationTimeout,
    ResilienceError,
    RetriesExhausted,
)

logger = logging.getLogger("resilience_crm.provider.facade")

T = TypeVar("T")

#: Seconds between looks at the shared cache while another process refreshes a key.
WAIT_POLL_INTERVAL = 0.01
#: Ids per query in ``load_many`` unless the caller says otherwise.
BATCH_SIZE = 100


class Served(NamedTuple):
    value: Any
    kind: str | None = None  # None, reads.STALE or reads.DEGRADED
    age: float = 0.0


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Served | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class Provider:
    """The ``protected`` object. Clocks, sleep and randomness are injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.cache = reads.ReadCache(clock, monotonic)
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()

    # Operations -------------------------------------------------------------------------

    def read(self, key: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["read"],
             ttl: float | None = None, stale_ttl: float | None = None,
             fallback: Callable[[], T] | None = None,
             using: str | None = DEFAULT_DB_ALIAS) -> T:
        """``fn()``'s value, from the cache while it is fresh. ``key`` names the result; the
        part before the first ``:`` is its key space, which writes invalidate."""
        served = self._read(key, fn, circuit, self._ttl(ttl), self._stale_ttl(stale_ttl),
                            fallback, using)
        if served.kind is not None:
            _mark(served)
        return served.value  # type: ignore[no-any-return]

    def write(self, key: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["write"],
              using: str | None = DEFAULT_DB_ALIAS) -> T:
        """``fn()`` in a transaction under the write circuit; then ``key``'s space is no
        longer fresh anywhere. Only serialization failures and deadlocks are retried: after
        a lost connection nobody knows whether the write was applied. A write that committed
        past its budget counts as a timeout but is returned, not turned into an error."""
        value = self._call(circuit, fn, using, retry_if=classify.is_conflict,
                           operation=reads.space_of(key), committed_is_done=True)
        self.invalidate(key, using=using)
        return value

    def rpc(self, name: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["rpc"],
            retry: bool = True) -> T:
        """``fn()`` (an upstream call, no database transaction) under the rpc circuit."""
        return self._call(circuit, fn, None, retry_if=None if retry else _never, operation=name)

    def auth(self, name: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["auth"],
             using: str | None = DEFAULT_DB_ALIAS) -> T:
        """``fn()`` (a credential check) under the auth circuit, with no cached reads."""
        return self._call(circuit, fn, using, operation=name)

    def load_many(self, key: str, ids: Iterable[Hashable],
                  fetch_many: Callable[[list[Any]], Mapping[Any, Any]], *,
                  circuit: str = OP_CIRCUITS["read"], ttl: float | None = None,
                  stale_ttl: float | None = None, batch_size: int = BATCH_SIZE,
                  using: str | None = DEFAULT_DB_ALIAS) -> dict[Any, Any]:
        """Values for ``ids`` as ``{id: value}``: cached ones from the cache, the rest from
        ``fetch_many(batch)`` (returning ``{id: value}``), one call per ``batch_size`` ids.
        Ids ``fetch_many`` does not return are left out."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        ttl, stale_ttl = self._ttl(ttl), self._stale_ttl(stale_ttl)
        unique = list(dict.fromkeys(ids))
        keys = {item: f"{key}:{item}" for item in unique}
        entries, version = self.cache.get_many(keys.values(), reads.space_of(key))
        now = self._clock()
        results: dict[Any, Any] = {}
        for item in unique:
            entry = entries.get(keys[item])
            if entry is not None and self._fresh(entry, version, ttl, now):
                results[item] = entry.value
        missing = [item for item in unique if item not in results]
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            try:
                found = dict(self._call(circuit, partial(fetch_many, batch), using,
                                        operation=reads.space_of(key)))
            except ResilienceError as err:
                for item in batch:
                    entry = entries.get(keys[item])
                    if entry is None or entry.age(now) >= ttl + stale_ttl:
                        raise err from err.__cause__
                    results[item] = entry.value
                    _mark(Served(entry.value, reads.STALE, entry.age(now)))
                    metrics.inc("calls", circuit=circuit, outcome="fallback")
                continue
            self.cache.set_many({keys[item]: value for item, value in found.items()},
                                ttl, stale_ttl, version)
            results.update((item, found[item]) for item in batch if item in found)
        return results

    def invalidate(self, key: str, *, using: str | None = DEFAULT_DB_ALIAS) -> None:
        """Make every cached read in ``key``'s space stale (after the surrounding
        transaction on ``using`` commits, if there is one)."""
        _after_commit(using, partial(self.cache.invalidate, reads.space_of(key)))

    def revoke(self, key: str, *, using: str | None = DEFAULT_DB_ALIAS) -> None:
        """Take ``key``'s cached read away, fresh and stale, everywhere (after the surrounding
        transaction on ``using`` commits, if there is one): the next read asks ``fn``, and
        while ``fn`` cannot answer nothing cached stands in for it. For values that must
        not outlive their source: a revoked token, a deleted user, a withdrawn permission."""
        _after_commit(using, partial(self.cache.remove, key))

    def write_handler(self, name: str, *, key: str = "", circuit: str = OP_CIRCUITS["write"],
                      using: str = DEFAULT_DB_ALIAS, model: type[Model] | None = None,
                      ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Register ``handler(payload)`` as the queued write ``name``. Its return value (JSON)
        is kept with the idempotency key; ``key``'s space is invalidated when it applies.
        With ``model``, ``submit`` refuses a payload whose fields are not its columns or
        whose values they cannot hold (``InvalidWrite``), before the write is applied or
        queued."""
        return queue.register(name, key=key, circuit=circuit, using=using, model=model)

    def submit(self, name: str, payload: Any, *, idempotency_key: str,
               entity: str = "") -> queue.Receipt:
        """Apply the write ``name`` now, or queue it while its circuit is open or the database
        unreachable. Writes of one ``entity`` are replayed in the order submitted."""
        return queue.submit(self, name, payload, idempotency_key=idempotency_key,
                            entity=entity)

    async def aread(self, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(self.read)(*args, **kwargs)

    async def awrite(self, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(self.write)(*args, **kwargs)

    async def arpc(self, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(self.rpc)(*args, **kwargs)

    async def aauth(self, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(self.auth)(*args, **kwargs)

    async def aload_many(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return await sync_to_async(self.load_many)(*args, **kwargs)

    async def asubmit(self, *args: Any, **kwargs: Any) -> queue.Receipt:
        return await sync_to_async(self.submit)(*args, **kwargs)

    def waiting(self, key: str) -> int:
        """How many threads of this process wait for another's read of ``key`` right now."""
        with self._flights_lock:
            flight = self._flights.get(key)
            return 0 if flight is None else flight.waiters

    # One call under a breaker and a deadline --------------------------------------------

    def _call(self, circuit: str, fn: Callable[[], T], using: str | None,
              *, retry_if: Callable[[BaseException], bool] | None = None,
              operation: str = "", committed_is_done: bool = False) -> T:
        metrics.inc("operations", circuit=circuit, operation=operation)
        breaker = get_breaker(circuit)
        permit = breaker.allow()  # CircuitOpenError: never run, never retried
        deadline = deadlines.Deadline(breaker.config.call_timeout, self._monotonic)
        budget = retries.budget_for(circuit)
        budget.deposit()
        attempt = 0
        while True:
            attempt += 1
            started = self._monotonic()
            try:
                value = self._attempt(fn, using, deadline)
            except Exception as exc:
                kind = classify.classify(exc)
                lost = _connection_lost(using)
                if (kind.dependency and deadline.expired) or kind.error is OperationTimeout:
                    self._finish(breaker, permit, machine.FAILURE, deadline, timeout=True)
                    raise _timeout(circuit) from exc
                pause = retries.backoff(attempt, kind.retry_after, rand=self._rand)
                took = self._monotonic() - started
                # A retry on a lost connection first waits for a new one: it starts only if
                # that wait, at its longest, fits in what is left too.
                wait = max(took, deadlines.connect_wait(using) if lost and using else 0.0)
                if (kind.retryable and (retry_if is None or retry_if(exc))
                        and attempt < retries.MAX_ATTEMPTS
                        and deadline.remaining() > pause + wait
                        and _may_retry(using) and budget.withdraw()):
                    metrics.inc("retries", circuit=circuit, operation=operation)
                    logger.info("%s %s: retrying after %r (attempt %s)", circuit, operation,
                                exc, attempt + 1)
                    self._sleep(pause)
                    continue
                failed = kind.dependency and breaker.is_failure(exc)
                outcome = machine.FAILURE if failed else machine.SUCCESS
                self._finish(breaker, permit, outcome, deadline)
                if isinstance(exc, ResilienceError) or kind.error is None:
                    raise
                if attempt > 1:
                    raise RetriesExhausted(retry_after=kind.retry_after, circuit=circuit) from exc
                raise kind.error(retry_after=kind.retry_after, circuit=circuit) from exc
            if deadline.expired:
                self._finish(breaker, permit, machine.FAILURE, deadline, timeout=True)
                if committed_is_done:  # a write that committed happened: no error for it
                    return value
                raise _timeout(circuit)
            breaker.settle(permit, deadline.elapsed())  # a success, or slow
            return value

    def _attempt(self, fn: Callable[[], T], using: str | None,
                 deadline: deadlines.Deadline) -> T:
        if using is None:
            return fn()
        outer = connections[using].in_atomic_block
        with deadlines.cut_off(using, deadline), transaction.atomic(using=using):
            try:
                previous = deadlines.set_statement_timeout(using, deadline.remaining())
                value = fn()
            except Exception:
                # Let go of a broken connection inside the block: leaving it to Django,
                # the block's end would open a new one (to restore autocommit) with no
                # regard to the deadline.
                if not outer and _connection_lost(using):
                    _discard_lost_connections(using)
                raise
            if outer and previous is not None:
                deadlines.restore_statement_timeout(using, previous)
            return value

    def _finish(self, breaker: Any, permit: Any, outcome: str, deadline: deadlines.Deadline,
                *, timeout: bool = False) -> None:
        if timeout:
            metrics.inc("calls", circuit=breaker.name, outcome="timeout")
        breaker.settle(permit, deadline.elapsed(), outcome)

    # Reads --------------------------------------------------------------------------------

    def _read(self, key: str, fn: Callable[[], Any], circuit: str, ttl: float,
              stale_ttl: float, fallback_fn: Callable[[], Any] | None,
              using: str | None) -> Served:
        lookup = self.cache.get(key)
        entry, now = lookup.entry, self._clock()
        if entry is not None and self._fresh(entry, lookup.space_version, ttl, now):
            return Served(entry.value)
        if entry is not None and entry.age(now) < ttl + stale_ttl:
            return self._revalidate(key, fn, circuit, ttl, stale_ttl, fallback_fn, using,
                                    lookup)
        return self._single_flight(
            key, lambda: self._fetch(key, fn, circuit, ttl, stale_ttl, fallback_fn, using,
                                     lookup),
            circuit)

    def _revalidate(self, key: str, fn: Callable[[], Any], circuit: str, ttl: float,
                    stale_ttl: float, fallback_fn: Callable[[], Any] | None,
                    using: str | None, lookup: reads.Lookup) -> Served:
        """A stale entry is at hand: one process in the cluster refreshes it, the others
        serve it (stale-while-revalidate); nobody refreshes while the circuit is open."""
        entry = lookup.entry
        assert entry is not None  # noqa: S101  (the caller checked)
        if _is_open(circuit):  # no refresh while open, and no lease to take for it
            return self._stale(entry, circuit)
        token = uuid.uuid4().hex
        if not self.cache.take_lease(key, token, self._budget(circuit)):
            return self._stale(entry, circuit)
        try:
            value = self._call(circuit, fn, using, operation=reads.space_of(key))
            self.cache.set(key, value, ttl, stale_ttl, lookup)
        except ResilienceError as err:
            return self._fallback_or_raise(err, entry, circuit, ttl, stale_ttl, fallback_fn)
        except Exception:  # a negative answer: the stale entry must not stand in for it
            self.cache.remove(key)
            raise
        finally:  # after the result is stored, so nobody sees neither lease nor result
            self.cache.release_lease(key, token)
        return Served(value)

    def _fetch(self, key: str, fn: Callable[[], Any], circuit: str, ttl: float,
               stale_ttl: float, fallback_fn: Callable[[], Any] | None, using: str | None,
               lookup: reads.Lookup) -> Served:
        """Nothing servable is cached: the one process holding the lease queries, the others
        wait for its result or its error (after a negative answer, which is not shared,
        they ask ``fn`` themselves)."""
        if _is_open(circuit):  # fail fast: the breaker answers, no lease needed
            try:
                value = self._call(circuit, fn, using, operation=reads.space_of(key))
            except ResilienceError as err:
                return self._fallback_or_raise(err, None, circuit, ttl, stale_ttl, fallback_fn)
            self.cache.set(key, value, ttl, stale_ttl, lookup)
            return Served(value)
        token = uuid.uuid4().hex
        leader = self.cache.take_lease(key, token, self._budget(circuit))
        if not leader:
            try:
                waited = self._await_leader(key, circuit, ttl)
            except ResilienceError as err:
                return self._fallback_or_raise(err, None, circuit, ttl, stale_ttl, fallback_fn)
            if waited is not None:
                return waited
            leader = self.cache.take_lease(key, token, self._budget(circuit))
        try:
            if leader:  # the previous leader may have stored its result just before
                done = self.cache.get_shared(key)
                if done.entry is not None and self._fresh(done.entry, done.space_version, ttl,
                                                          self._clock()):
                    return Served(done.entry.value)
            value = self._call(circuit, fn, using, operation=reads.space_of(key))
            self.cache.set(key, value, ttl, stale_ttl, lookup)
        except ResilienceError as err:
            if leader:
                self.cache.publish_error(key, err.code, err.message, err.retry_after)
            return self._fallback_or_raise(err, None, circuit, ttl, stale_ttl, fallback_fn)
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
        deadline = deadlines.Deadline(self._budget(circuit), self._monotonic)
        while not deadline.expired:
            self._sleep(WAIT_POLL_INTERVAL)
            lookup = self.cache.get_shared(key)
            entry = lookup.entry
            if entry is not None and self._fresh(entry, lookup.space_version, ttl,
                                                 self._clock()):
                return Served(entry.value)
            error = self.cache.get_error(key, since)
            if error is not None:
                raise _error_from(error, circuit)
            if not self.cache.lease_held(key):
                return None
        raise _timeout(circuit)

    def _single_flight(self, key: str, run: Callable[[], Served], circuit: str) -> Served:
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
        if leader:
            try:
                flight.result = run()
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                with self._flights_lock:
                    self._flights.pop(key, None)
                flight.done.set()
            return flight.result
        if not flight.done.wait(self._budget(circuit)):
            raise _timeout(circuit)  # we give up; the leader carries on
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None  # noqa: S101
        return flight.result

    def _fallback_or_raise(self, err: ResilienceError, entry: reads.Entry | None,
                           circuit: str, ttl: float, stale_ttl: float,
                           fallback_fn: Callable[[], Any] | None) -> Served:
        if entry is not None and entry.age(self._clock()) < ttl + stale_ttl:
            return self._stale(entry, circuit)
        if fallback_fn is not None:
            metrics.inc("calls", circuit=circuit, outcome="fallback")
            return Served(fallback_fn(), reads.DEGRADED)
        raise err

    def _stale(self, entry: reads.Entry, circuit: str) -> Served:
        metrics.inc("calls", circuit=circuit, outcome="fallback")
        return Served(entry.value, reads.STALE, entry.age(self._clock()))

    @staticmethod
    def _fresh(entry: reads.Entry, space_version: int, ttl: float, now: float) -> bool:
        return entry.space_version == space_version and entry.age(now) < ttl

    @staticmethod
    def _ttl(ttl: float | None) -> float:
        return float(settings.FALLBACK_TTL if ttl is None else ttl)

    @staticmethod
    def _stale_ttl(stale_ttl: float | None) -> float:
        return float(settings.FALLBACK_STALE_TTL if stale_ttl is None else stale_ttl)

    @staticmethod
    def _budget(circuit: str) -> float:
        return float(get_breaker(circuit).config.call_timeout)


def _is_open(circuit: str) -> bool:
    """This worker's view (no I/O while it is fresh) says the circuit rejects calls."""
    return get_breaker(circuit).state in (machine.OPEN, machine.FORCED_OPEN)


def _after_commit(using: str | None, action: Callable[[], None]) -> None:
    """``action()`` once the transaction on ``using`` commits, or now outside one."""
    if using is not None and connections[using].in_atomic_block:
        transaction.on_commit(action, using=using)
    else:
        action()


def _mark(served: Served) -> None:
    if served.kind is not None:
        reads.mark(served.kind, served.age)


def _never(exc: BaseException) -> bool:
    return False


def _timeout(circuit: str) -> OperationTimeout:
    return OperationTimeout(circuit=circuit)


def _may_retry(using: str | None) -> bool:
    """A retry inside the caller's own transaction would run in a broken transaction."""
    return using is None or not connections[using].in_atomic_block


def _connection_lost(using: str | None) -> bool:
    """This thread has no working connection to ``using`` (it was never made, or it broke),
    so another attempt must first get a new one."""
    if using is None:
        return False
    connection = connections[using].connection
    return connection is None or bool(getattr(connection, "closed", False))


def _discard_lost_connections(using: str) -> None:
    """Let go of this thread's broken connection to ``using``. In a pool, the others made
    before it most likely broke with it (a restart, a failover): the pool replaces them all
    (``drain``), rather than hand them out one by one to fail the calls that get them."""
    connection = connections[using]
    connection.close()
    pool = getattr(connection, "pool", None)  # PostgreSQL with OPTIONS["pool"]
    if pool is not None:
        pool.drain()


def _error_from(error: Mapping[str, Any], circuit: str) -> ResilienceError:
    """The error another process's leader met, as the same class."""
    cls = _ERROR_CLASSES.get(str(error.get("code")), ResilienceError)
    if cls is CircuitOpenError:
        return CircuitOpenError(retry_after=error.get("retry_after"), circuit=circuit)
    return cls(error.get("message"), retry_after=error.get("retry_after"), circuit=circuit)


def _subclasses(cls: type[ResilienceError]) -> list[type[ResilienceError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


_ERROR_CLASSES = {cls.code: cls for cls in _subclasses(ResilienceError)}

#: The protected data provider (see DESIGN.md, "Python API").
protected = Provider()
