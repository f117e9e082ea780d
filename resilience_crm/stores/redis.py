"""Live breaker state in Redis: each step is one EVALSHA of ``step.lua``, a port of
:func:`resilience_crm.core.step`, so every process sees and changes the same state atomically.

The connection is django-redis's for the cache alias ``CACHE_ALIAS`` names, and keys are
built with that cache's ``make_key`` (so ``KEY_PREFIX`` and ``VERSION`` apply). Time comes
from the Redis server, so workers with skewed clocks still agree on when a circuit reopens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from django.core.cache import caches
from django_redis import get_redis_connection
from redis import exceptions as redis_exceptions

from resilience_crm.conf import settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.stores.base import BaseStore

SCRIPT = Path(__file__).with_name("step.lua").read_text(encoding="utf-8")

#: A circuit nobody has stepped for this long is forgotten (the key's TTL, in ms).
STATE_TTL_MS = 7 * 24 * 3600 * 1000

#: Errors that mean Redis cannot be reached or cannot take writes right now. Anything else
#: (a script error, a wrong type) is a bug and propagates as it is.
UNAVAILABLE = (
    redis_exceptions.ConnectionError,  # also loading, auth and pool-exhausted errors
    redis_exceptions.TimeoutError,
    redis_exceptions.InvalidResponse,  # something that is not Redis answered
    redis_exceptions.ReadOnlyError,  # a replica during failover
    redis_exceptions.ClusterDownError,  # also MASTERDOWN
    redis_exceptions.OutOfMemoryError,
    OSError,
)


class RedisStore(BaseStore):
    """Circuits' live state as one JSON string per circuit in the Redis of a django-redis cache."""

    shared = True

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias or settings.CACHE_ALIAS
        self._cache = caches[self.alias]
        self._client = get_redis_connection(self.alias)
        self._script = self._client.register_script(SCRIPT)

    def key(self, name: str) -> str:
        return str(self._cache.make_key(f"resilience:circuit:{name}"))

    def step(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        rand: float,
        entries: Sequence[Sequence[Any]] = (),
        op: str | None = None,
        arg: Mapping[str, Any] | None = None,
        now: int | None = None,
    ) -> dict[str, Any]:
        """One atomic :func:`resilience_crm.core.step` in one round trip.

        ``now`` (ms) replaces the Redis server's clock: for tests only.
        """
        argv = [
            json.dumps(dict(config)),
            repr(float(rand)),
            json.dumps([list(entry) for entry in entries]),
            op or "",
            json.dumps(dict(arg or {})),
            "" if now is None else str(int(now)),
            str(STATE_TTL_MS),
        ]
        try:
            raw = self._script(keys=[self.key(name)], args=argv)
        except UNAVAILABLE as err:
            raise StoreUnavailable(circuit=name) from err
        result = _ints(json.loads(raw))
        # cjson encodes an empty Lua table as an object.
        result["transitions"] = list(result["transitions"] or [])
        return result

    def read_state(self, name: str) -> dict[str, Any] | None:
        """The circuit's stored state dict (see :func:`resilience_crm.core.new_state`), if any."""
        try:
            raw = self._client.get(self.key(name))
        except UNAVAILABLE as err:
            raise StoreUnavailable(circuit=name) from err
        return None if raw is None else _ints(json.loads(raw))

    def clear(self, name: str) -> None:
        try:
            self._client.delete(self.key(name))
        except UNAVAILABLE as err:
            raise StoreUnavailable(circuit=name) from err


def _ints(value: Any) -> Any:
    """Whole floats back to ints, as core keeps them (Lua has only floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ints(item) for item in value]
    return value
