"""Live breaker state in Redis: each step is one EVALSHA of ``step.lua``, a port of
:func:`resilience_crm.breakers.machine.step`, so every process sees and changes the same state
atomically.

The connection is django-redis's for the cache alias ``CACHE_ALIAS`` names, and keys are
built with that cache's ``make_key`` (so ``KEY_PREFIX`` and ``VERSION`` apply). Time comes
from the Redis server, so workers with skewed clocks still agree on when a circuit reopens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.cache import caches
from django_redis import get_redis_connection

from resilience_crm.breakers.stores.base import BaseStore, StateMissing, Step
from resilience_crm.conf import settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.lua import REDIS_DOWN, LuaScript

SCRIPT = LuaScript(Path(__file__).with_name("step.lua").read_text(encoding="utf-8"))

#: A circuit nobody has stepped for this long is forgotten (the key's TTL, in ms); the next
#: step seeds it again from the durable ``Circuit`` row.
STATE_TTL_MS = 7 * 24 * 3600 * 1000

#: Errors that make a step fail; each degrades to the worker's own breaker.
FAILURES = (*REDIS_DOWN, ValueError)  # ValueError: a reply that is not the script's JSON


class RedisStore(BaseStore):
    """Circuits' live state as one JSON string per circuit in the Redis of a django-redis cache."""

    shared = True

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias or settings.CACHE_ALIAS
        self._cache = caches[self.alias]
        self._client = get_redis_connection(self.alias)

    def key(self, name: str) -> str:
        return str(self._cache.make_key(f"resilience:circuit:{name}"))

    def shard(self, name: str) -> str:
        """On Redis Cluster, the master that serves the circuit's slot as this client last
        learnt (it learns again when a node fails); ``""`` on a single Redis."""
        if getattr(self._client, "connection_pool", None) is not None:
            return ""
        try:
            return str(self._client.get_node_from_key(self.key(name)).name)
        except Exception:  # noqa: BLE001  (a slot no master serves: one shard of its own)
            return "?"

    def step(self, step: Step) -> dict[str, Any]:
        """One atomic :func:`resilience_crm.breakers.machine.step` in one round trip."""
        argv = [
            json.dumps(dict(step.config)),
            repr(float(step.rand)),
            json.dumps([list(entry) for entry in step.entries]),
            step.op or "",
            json.dumps(dict(step.arg or {})),
            "" if step.now is None else str(int(step.now)),
            str(STATE_TTL_MS),
            "1" if step.require_state else "",
            "" if step.seed is None else json.dumps(dict(step.seed)),
        ]
        try:
            result = _ints(json.loads(SCRIPT(self._client, [self.key(step.name)], argv)))
        except FAILURES as err:
            raise StoreUnavailable(circuit=step.name) from err
        if result.get("missing"):
            raise StateMissing(step.name)
        # cjson encodes an empty Lua table as an object.
        result["transitions"] = list(result["transitions"] or [])
        return result

    def read(self, name: str) -> dict[str, Any] | None:
        """The circuit's stored state dict (see :func:`resilience_crm.breakers.machine.new_state`),
        if any."""
        try:
            raw = self._client.get(self.key(name))
            return None if raw is None else _ints(json.loads(raw))
        except FAILURES as err:
            raise StoreUnavailable(circuit=name) from err

    def clear(self, name: str) -> None:
        try:
            self._client.delete(self.key(name))
        except FAILURES as err:
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
