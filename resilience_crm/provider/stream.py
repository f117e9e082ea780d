"""Where writes wait while the database is down: a Redis stream (``STREAM_KEY``), with a
marker per idempotency key holding the payload's hash, both written at once by
``enqueue.lua``.

The marker answers "is this key queued already, and with which payload" without reading the
stream; replay deletes it with the entry once the write has its ``QueuedWrite`` row. Without
Redis (:func:`available` is false) there is no stream.

Most of the time the stream is empty, and asking for a marker is a round trip spent on every
write for nothing. Each write's cache invalidation reads the stream's length in its own round
trip (:func:`learned`); while this process saw it empty less than ``EMPTY_TRUSTED`` seconds
ago, :func:`queued_hash` answers "not queued" without asking. A write queued elsewhere within
that time with the same key is caught where it always was, whatever the timing: the key is
unique in ``QueuedWrite``, so the replay finds the row of the write applied meanwhile and
drops its copy (or, with another payload, logs and drops it; see docs/provider.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.cache import caches
from django_redis import get_redis_connection

from resilience_crm.conf import cache_is_redis, settings
from resilience_crm.exceptions import QueueUnavailable
from resilience_crm.lua import LuaScript, pipelined

SCRIPT = LuaScript(Path(__file__).with_name("enqueue.lua").read_text(encoding="utf-8"))
STREAM_KEY = "resilience:queue:stream"
MARKER_PREFIX = "resilience:queue:key:"
#: Seconds this process trusts having seen the stream empty.
EMPTY_TRUSTED = 1.0


class Emptiness:
    """When this process last saw the stream empty, on a monotonic clock (injectable)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.until = 0.0

    def saw(self, length: int | None) -> None:
        if length is not None:
            self.until = self.monotonic() + EMPTY_TRUSTED if length == 0 else 0.0

    def forget(self) -> None:
        self.until = 0.0

    @property
    def trusted(self) -> bool:
        return self.monotonic() < self.until


#: What this process knows of the stream's emptiness.
emptiness = Emptiness()


def available() -> bool:
    return cache_is_redis(settings.CACHE_ALIAS)


def connection() -> tuple[Any, Any]:
    """The redis-py client and the Django cache (for ``make_key``) of ``CACHE_ALIAS``."""
    return get_redis_connection(settings.CACHE_ALIAS), caches[settings.CACHE_ALIAS]


def marker(cache: Any, idempotency_key: str) -> str:
    """The full key of ``idempotency_key``'s marker: the stream's full key is its hash tag, so
    a marker and the stream share a Redis Cluster slot and ``enqueue.lua`` may touch both."""
    tag = cache.make_key(STREAM_KEY)
    return str(cache.make_key(f"{MARKER_PREFIX}{{{tag}}}:{idempotency_key}"))


def append(name: str, body: str, *, idempotency_key: str, entity: str, digest: str) -> str | None:
    """Append a write, unless its key is queued already; the queued write's payload hash
    then, else ``None``. Raises :class:`QueueUnavailable` when Redis cannot take it."""
    try:
        client, cache = connection()
        previous = SCRIPT(
            client,
            [marker(cache, idempotency_key), cache.make_key(STREAM_KEY)],
            [digest, name, idempotency_key, body, entity],
        )
    except Exception as err:  # noqa: BLE001  (every redis-py failure means "not queued")
        raise QueueUnavailable() from err
    emptiness.forget()  # not empty now
    return None if previous is None else text(previous)


def stream_key() -> str:
    """The stream's name (before ``make_key``), or ``""`` without Redis."""
    return STREAM_KEY if available() else ""


def queued_hash(key: str) -> str | None:
    """The payload hash of a write with ``key`` still waiting in the stream, if any: asked
    of Redis (with the stream's length, in the same round trip) unless this process saw the
    stream empty moments ago."""
    if not available() or emptiness.trusted:
        return None
    try:
        client, cache = connection()
        value, length = pipelined(client, ("GET", marker(cache, key)),
                                  ("XLEN", cache.make_key(STREAM_KEY)))
    except Exception:  # noqa: BLE001  (Redis down: the database decides)
        return None
    emptiness.saw(int(length))
    return None if value is None else text(value)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
