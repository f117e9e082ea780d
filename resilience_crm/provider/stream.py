"""Where writes wait while the database is down: a Redis stream (``STREAM_KEY``), with a
marker per idempotency key holding the payload's hash, both written at once by
``enqueue.lua``.

The marker answers "is this key queued already, and with which payload" without reading the
stream; replay deletes it with the entry once the write has its ``QueuedWrite`` row. Without
Redis (:func:`available` is false) there is no stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.cache import caches
from django_redis import get_redis_connection

from resilience_crm.conf import cache_is_redis, settings
from resilience_crm.exceptions import QueueUnavailable
from resilience_crm.lua import LuaScript

SCRIPT = LuaScript(Path(__file__).with_name("enqueue.lua").read_text(encoding="utf-8"))
STREAM_KEY = "resilience:queue:stream"
MARKER_PREFIX = "resilience:queue:key:"


def available() -> bool:
    return cache_is_redis(settings.CACHE_ALIAS)


def connection() -> tuple[Any, Any]:
    """The redis-py client and the Django cache (for ``make_key``) of ``CACHE_ALIAS``."""
    return get_redis_connection(settings.CACHE_ALIAS), caches[settings.CACHE_ALIAS]


def append(name: str, body: str, *, idempotency_key: str, entity: str, digest: str) -> str | None:
    """Append a write, unless its key is queued already; the queued write's payload hash
    then, else ``None``. Raises :class:`QueueUnavailable` when Redis cannot take it."""
    try:
        client, cache = connection()
        previous = SCRIPT(
            client,
            [cache.make_key(MARKER_PREFIX + idempotency_key), cache.make_key(STREAM_KEY)],
            [digest, name, idempotency_key, body, entity],
        )
    except Exception as err:  # noqa: BLE001  (every redis-py failure means "not queued")
        raise QueueUnavailable() from err
    return None if previous is None else text(previous)


def queued_hash(key: str) -> str | None:
    """The payload hash of a write with ``key`` still waiting in the stream, if any."""
    if not available():
        return None
    try:
        client, cache = connection()
        value = client.get(cache.make_key(MARKER_PREFIX + key))
    except Exception:  # noqa: BLE001  (Redis down: the database decides)
        return None
    return None if value is None else text(value)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
