"""``protected``: data access that keeps working, or fails fast and clearly, while the
database or an upstream is slow, flapping or gone.

Every operation runs ``fn`` under its circuit's breaker and deadline (``call_timeout``),
retries transient errors within that deadline, and counts the outcome (the call engine,
``calls.py``). Reads add the fallback chain: fresh cache, bounded stale cache, the caller's
degraded ``fallback``, then the problem (the read path, ``reads.py``; see DESIGN.md). Writes
invalidate their key space; ``submit`` applies a registered write now or queues it
(``queue.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Model

import resilience_crm.provider.cache as cache
import resilience_crm.provider.classify as classify
import resilience_crm.provider.handlers as handlers
import resilience_crm.provider.labels as labels
import resilience_crm.provider.queue as queue
import resilience_crm.provider.reads as reads
import resilience_crm.provider.stream as stream
from resilience_crm.conf import settings
from resilience_crm.constants import OP_CIRCUITS

T = TypeVar("T")

#: Ids per query in ``load_many`` unless the caller says otherwise.
BATCH_SIZE = 100


class Provider(reads.Reads):
    """The ``protected`` object: the operations views call, on the read path
    (:class:`~resilience_crm.provider.reads.Reads`) and the call engine
    (:class:`~resilience_crm.provider.calls.Engine`) beneath it. Clocks, sleep and randomness
    are injectable for tests (``clock``, ``monotonic``, ``sleep``, ``rand``)."""

    def read(self, key: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["read"],
             ttl: float | None = None, stale_ttl: float | None = None,
             fallback: Callable[[], T] | None = None,
             using: str | None = DEFAULT_DB_ALIAS,
             replicas: list[str] | tuple[str, ...] | None = None) -> T:
        """``fn()``'s value, from the cache while it is fresh. ``key`` names the result; the
        part before the first ``:`` is its key space, which writes invalidate. When the
        primary fails, a replica of ``replicas`` (default ``READ_REPLICAS``) answers before
        the stale entry does."""
        served = self._read(reads.Read(key, fn, circuit, _ttl(ttl), _stale_ttl(stale_ttl),
                                       fallback, using, replicas))
        if served.kind is not None:  # in this thread: waiters share the leader's result
            labels.mark(served.kind, served.age)
        return served.value  # type: ignore[no-any-return]

    def write(self, key: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["write"],
              using: str | None = DEFAULT_DB_ALIAS,
              then: Callable[[T], object] | None = None) -> T:
        """``fn()`` in a transaction under the write circuit; then ``key``'s space is no
        longer fresh anywhere. Only serialization failures and deadlocks are retried: after
        a lost connection nobody knows whether the write was applied. A write that committed
        past its budget counts as a timeout but is returned, not turned into an error.

        ``then(value)``, when given, runs last in the same transaction, and the ``COMMIT``
        goes out with its first statement, in one round trip: make that statement the
        transaction's last (one ``save()``, one ``create()``)."""
        value = self._call(circuit, fn, using, retry_if=classify.is_conflict,
                           operation=cache.space_of(key), committed_is_done=True, then=then)
        self.invalidate(key, using=using)
        return value

    def lookup(self, key: str, fn: Callable[[], T], *, circuit: str = OP_CIRCUITS["write"],
               using: str | None = DEFAULT_DB_ALIAS) -> T:
        """``fn()``, a read the write path needs (what became of a write), under ``circuit``
        with its deadline and retries: no cached read, and nothing invalidated."""
        return self._call(circuit, fn, using, operation=cache.space_of(key))

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
                  using: str | None = DEFAULT_DB_ALIAS,
                  replicas: list[str] | tuple[str, ...] | None = None,
                  fallback: Callable[[list[Any]], Mapping[Any, Any]] | None = None,
                  ) -> dict[Any, Any]:
        """Values for ``ids`` as ``{id: value}``: cached ones from the cache, the rest from
        ``fetch_many(batch)`` (returning ``{id: value}``), one call per ``batch_size`` ids.
        Ids ``fetch_many`` does not return are left out. A batch whose call fails follows
        ``read``'s chain: a replica of ``replicas`` (default ``READ_REPLICAS``) answers it,
        else each id's stale entry, else ``fallback(ids)`` (``{id: value}``, labelled
        degraded) for the ids with nothing servable, else the error."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        return self._load_many(reads.Many(key, fetch_many, circuit, _ttl(ttl),
                                          _stale_ttl(stale_ttl), batch_size, using, replicas,
                                          fallback), ids)

    def invalidate(self, key: str, *, using: str | None = DEFAULT_DB_ALIAS) -> None:
        """Make every cached read in ``key``'s space stale (after the surrounding
        transaction on ``using`` commits, if there is one)."""
        _after_commit(using, partial(self._invalidate, cache.space_of(key)))

    def _invalidate(self, space: str) -> None:
        """Bump ``space``'s version; the write queue's length comes back in the same round
        trip, so the next ``submit`` knows whether a queued write may share its key."""
        stream.emptiness.saw(self.cache.invalidate(space, stream_length=stream.stream_key()))

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
        return handlers.register(name, key=key, circuit=circuit, using=using, model=model)

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


def _after_commit(using: str | None, action: Callable[[], None]) -> None:
    """``action()`` once the transaction on ``using`` commits, or now outside one."""
    if using is not None and connections[using].in_atomic_block:
        transaction.on_commit(action, using=using)
    else:
        action()


def _never(exc: BaseException) -> bool:
    return False


def _ttl(ttl: float | None) -> float:
    return float(settings.FALLBACK_TTL if ttl is None else ttl)


def _stale_ttl(stale_ttl: float | None) -> float:
    return float(settings.FALLBACK_STALE_TTL if stale_ttl is None else stale_ttl)


#: The protected data provider (see DESIGN.md, "Python API").
protected = Provider()
