"""Cached read results: a small per-process layer in front of the shared cache, the leases
that let one process refresh a key for the whole cluster, and the errors it leaves for the
processes waiting on it.

An entry is ``{"v": value, "t": stored_at, "s": space_version, "k": key_version}`` under
the key the caller gave. A read is fresh while it is younger than its ``ttl`` and no write
touched its key space since (the space's version, one more cache key, is read in the same
round trip); after that it may still be served when the dependency fails, up to
``stale_ttl`` past its freshness, and never later: the shared cache drops it then, and so
does the check here.

:meth:`ReadCache.remove` takes one key's entry away, stale copy included, and bumps the
key's own version (read in the same round trip as the entry). A read that started before
stores its result with the version it saw, so nobody takes that result for the key's, and
takes it away again: an answer from before a removal never outlives it.

The per-process layer keeps an entry for ``LOCAL_TTL`` seconds at most, so a write or a
removal made in another process is seen everywhere within that time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

from django.core.cache import caches

from resilience_crm.conf import cache_is_redis, settings
from resilience_crm.lua import REDIS_DOWN, pipelined

logger = logging.getLogger("resilience_crm.provider.cache")

#: Seconds an entry is kept in the per-process layer.
LOCAL_TTL = 1.0
#: Entries the per-process layer holds at most (least recently used go first).
LOCAL_MAX_ENTRIES = 1024
#: Prefix of every key this module writes to the shared cache.
PREFIX = "resilience:read:"
#: Prefix of the per-key versions :meth:`ReadCache.remove` bumps.
REMOVED_PREFIX = "resilience:removed:"
#: Seconds a key's removal version is kept: longer than any read in flight can take (a read
#: ends within its circuit's ``call_timeout``; one that outlived this would find no version
#: where it saw one, and take its result away too).
REMOVED_TTL = 300
#: Prefix of the leases that let one process refresh a key for the whole cluster.
LEASE_PREFIX = "resilience:lease:"
#: Prefix of the errors a refreshing process leaves for the processes waiting on it.
ERROR_PREFIX = "resilience:error:"
#: Seconds such an error is kept.
ERROR_TTL = 5


class Entry(NamedTuple):
    value: Any
    stored_at: float  # wall-clock seconds
    space_version: int

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at)


class Lookup(NamedTuple):
    entry: Entry | None
    space_version: int
    key_version: int = 0  # bumped by each removal of the key


def space_of(key: str) -> str:
    """The key space a key belongs to: the part before the first ``:``."""
    return key.split(":", 1)[0]


class SharedCacheDown(Exception):
    """The shared cache failed moments ago: left alone until ``STORE_RETRY_INTERVAL`` ends."""


class _Guarded:
    """The shared cache, not called for ``STORE_RETRY_INTERVAL`` after it failed to answer:
    an outage costs a read one socket timeout, not one for each cache call it makes."""

    def __init__(self, cache: Any, owner: ReadCache) -> None:
        self._cache = cache
        self._owner = owner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return partial(self.run, getattr(self._cache, name))

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a call to the shared cache: refused while it is left
        alone, and leaving it alone from a failure on."""
        owner = self._owner
        if owner._monotonic() < owner._down_until:
            raise SharedCacheDown()
        try:
            return fn(*args, **kwargs)
        except REDIS_DOWN:
            owner._down_until = owner._monotonic() + settings.STORE_RETRY_INTERVAL
            raise


class ReadCache:
    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._monotonic = monotonic
        self._local: OrderedDict[str, tuple[float, Lookup]] = OrderedDict()
        self._lock = threading.Lock()
        self._down_until = 0.0

    @property
    def shared(self) -> Any:
        return _Guarded(caches[settings.CACHE_ALIAS], self)

    def get(self, key: str) -> Lookup:
        with self._lock:
            held = self._local.get(key)
            if held is not None and self._monotonic() - held[0] < LOCAL_TTL:
                self._local.move_to_end(key)
                return held[1]
        lookup = self.get_shared(key)
        if lookup.entry is not None:
            self._remember(key, lookup)
        return lookup

    def get_many(self, keys: Iterable[str], space: str) -> tuple[dict[str, Entry], int]:
        """Entries for ``keys`` from the shared cache, whatever their age, and the version of
        their key ``space`` (for batches; one round trip)."""
        keys = list(keys)
        version_key = self._version_key(space)
        try:
            found = self.shared.get_many([PREFIX + key for key in keys] + [version_key])
        except Exception as err:  # noqa: BLE001  (an unreachable cache is a miss)
            logger.warning("Read cache unavailable: %s", err)
            return {}, -1
        entries = {}
        for key in keys:
            raw = found.get(PREFIX + key)
            if isinstance(raw, dict):
                entries[key] = Entry(raw["v"], raw["t"], raw.get("s", 0))
        return entries, int(found.get(version_key) or 0)

    def set(self, key: str, value: Any, ttl: float, stale_ttl: float,
            lookup: Lookup) -> Entry:
        """Store ``value``, read after ``lookup``; take it away again when the key was
        removed since ``lookup`` (the removal may have come between the read and now)."""
        entry = Entry(value, self.clock(), lookup.space_version)
        self.set_many({key: value}, ttl, stale_ttl, lookup.space_version, lookup.key_version)
        try:
            removed = self.shared.get(REMOVED_PREFIX + key) or 0
        except Exception:  # noqa: BLE001  (nothing was stored either)
            removed = lookup.key_version
        if int(removed) != lookup.key_version:
            self._delete(key)
            return entry
        self._remember(key, lookup._replace(entry=entry))
        return entry

    def set_many(self, values: dict[str, Any], ttl: float, stale_ttl: float,
                 space_version: int, key_version: int = 0) -> None:
        now = self.clock()
        data = {PREFIX + key: {"v": value, "t": now, "s": space_version, "k": key_version}
                for key, value in values.items()}
        try:
            self.shared.set_many(data, timeout=max(1, int(ttl + stale_ttl + 1)))
        except Exception as err:  # noqa: BLE001
            logger.warning("Read cache unavailable, result not stored: %s", err)

    def invalidate(self, space: str, *, stream_length: str = "") -> int | None:
        """Mark every entry of ``space`` as no longer fresh (they stay as stale fallbacks).
        With ``stream_length``, a Redis stream's name, return its length, read in the same
        round trip (``None`` when the cache is not Redis or did not answer)."""
        with self._lock:
            for key in [k for k in self._local if space_of(k) == space]:
                del self._local[key]
        try:
            return self._bump(self._version_key(space), None, stream_length)
        except Exception as err:  # noqa: BLE001
            logger.warning("Read cache unavailable, %s not invalidated: %s", space, err)
            return None

    def remove(self, key: str) -> None:
        """Take ``key``'s entry away, fresh and stale, from the shared cache and this
        process's layer (other processes' layers drop it within ``LOCAL_TTL``)."""
        try:
            self._bump(REMOVED_PREFIX + key, REMOVED_TTL)
        except Exception as err:  # noqa: BLE001
            logger.warning("Read cache unavailable, %s not removed: %s", key, err)
        self._delete(key)

    def _bump(self, key: str, timeout: float | None, stream_length: str = "") -> int | None:
        """Add one to the shared counter ``key``, starting it at 1; on Redis in one round
        trip (``INCR``), with the length of the stream ``stream_length`` if named."""
        if cache_is_redis(settings.CACHE_ALIAS):
            return self.shared.run(partial(_bump_on_redis, key, timeout, stream_length))
        try:
            if not self.shared.add(key, 1, timeout=timeout):
                self.shared.incr(key)
        except ValueError:  # expired or evicted between add and incr
            self.shared.set(key, 1, timeout=timeout)
        return None

    def _delete(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)
        try:
            self.shared.delete(PREFIX + key)
        except Exception as err:  # noqa: BLE001
            logger.warning("Read cache unavailable, %s not removed: %s", key, err)

    def forget_local(self) -> None:
        with self._lock:
            self._local.clear()

    def take_lease(self, key: str, token: str, timeout: float) -> bool:
        """Claim the one refresh of ``key`` across the cluster (``SET NX`` on Redis); ``True``
        also when the cache is unreachable, as then every process is on its own."""
        try:
            seconds = max(1, math.ceil(timeout))
            return bool(self.shared.add(LEASE_PREFIX + key, token, timeout=seconds))
        except Exception as err:  # noqa: BLE001
            logger.warning("Read cache unavailable, refreshing %s without a lease: %s", key, err)
            return True

    def lease_held(self, key: str) -> bool:
        try:
            return self.shared.get(LEASE_PREFIX + key) is not None
        except Exception:  # noqa: BLE001
            return False

    def release_lease(self, key: str, token: str) -> None:
        try:
            if self.shared.get(LEASE_PREFIX + key) == token:
                self.shared.delete(LEASE_PREFIX + key)
        except Exception as err:  # noqa: BLE001  (the lease expires on its own)
            logger.warning("Read cache unavailable, lease on %s left to expire: %s", key, err)

    def publish_error(self, key: str, code: str, message: str,
                      retry_after: float | None) -> None:
        """Tell processes waiting for the leader's result that it failed, and how."""
        error = {"code": code, "message": message, "retry_after": retry_after,
                 "at": self.clock()}
        try:
            self.shared.set(ERROR_PREFIX + key, error, timeout=ERROR_TTL)
        except Exception:  # noqa: BLE001  (waiters then give up at their deadline)
            logger.warning("Read cache unavailable, error on %s not shared.", key)

    def get_error(self, key: str, since: float) -> dict[str, Any] | None:
        try:
            error = self.shared.get(ERROR_PREFIX + key)
        except Exception:  # noqa: BLE001
            return None
        return error if isinstance(error, dict) and error.get("at", 0) >= since else None

    def get_shared(self, key: str) -> Lookup:
        version_key = self._version_key(space_of(key))
        try:
            found = self.shared.get_many([PREFIX + key, version_key, REMOVED_PREFIX + key])
        except Exception as err:  # noqa: BLE001  (an unreachable cache is a miss)
            logger.warning("Read cache unavailable: %s", err)
            return Lookup(None, -1)
        raw = found.get(PREFIX + key)
        version = int(found.get(version_key) or 0)
        removed = int(found.get(REMOVED_PREFIX + key) or 0)
        entry = None
        if isinstance(raw, dict) and raw.get("k", 0) == removed:  # else: from before a removal
            entry = Entry(raw["v"], raw["t"], raw.get("s", 0))
        return Lookup(entry, version, removed)

    def _remember(self, key: str, lookup: Lookup) -> None:
        with self._lock:
            self._local[key] = (self._monotonic(), lookup)
            self._local.move_to_end(key)
            while len(self._local) > LOCAL_MAX_ENTRIES:
                self._local.popitem(last=False)

    @staticmethod
    def _version_key(space: str) -> str:
        return f"resilience:space:{space}"


def _bump_on_redis(key: str, timeout: float | None, stream_length: str) -> int | None:
    """``INCR`` (django-redis keeps integers as they are, so the cache reads it back), its
    expiry, and the length of a stream, pipelined: one round trip."""
    shared: Any = caches[settings.CACHE_ALIAS]
    commands: list[tuple[Any, ...]] = [("INCR", shared.make_key(key))]
    if timeout is not None:
        commands.append(("EXPIRE", shared.make_key(key), int(timeout)))
    if stream_length:
        commands.append(("XLEN", shared.make_key(stream_length)))
    replies = pipelined(shared.client.get_client(write=True), *commands)
    return int(replies[-1]) if stream_length else None
