"""Rate limits in Redis: one EVALSHA of ``gcra.lua`` per request decides every limit that
applies, all or none, on the Redis server's clock.

The connection is django-redis's for the cache alias ``CACHE_ALIAS`` names, so its socket
timeouts bound every decision; keys go through that cache's ``make_key``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from django.core.cache import caches
from django_redis import get_redis_connection

from resilience_crm.conf import settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.lua import REDIS_DOWN, LuaScript
from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import Limit, Outcome
from resilience_crm.ratelimit.stores.base import BaseLimiterStore

SCRIPT = LuaScript(Path(__file__).with_name("gcra.lua").read_text(encoding="utf-8"))
#: The server's clock and the keys' TATs ("" where absent), read in one step: a script,
#: as a pipeline cannot ask a Redis Cluster for the time.
PEEK = LuaScript("""local now = redis.call("TIME")
local reply = {now[1], now[2]}
for i = 1, #KEYS do reply[i + 2] = redis.call("GET", KEYS[i]) or "" end
return reply""")


class RedisLimiterStore(BaseLimiterStore):
    shared = True
    records_refusals = True

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias or settings.CACHE_ALIAS
        self._cache = caches[self.alias]
        self.client = get_redis_connection(self.alias)
        # On a Redis Cluster (a client without one pool) a script reaches one slot: keys of
        # another principal (an address's failures) cannot join a decision.
        self.checks_in_step = getattr(self.client, "connection_pool", None) is not None

    def key(self, principal: str, suffix: str, tag: str | None = None) -> str:
        return str(self._cache.make_key(super().key(principal, suffix, tag)))

    def evaluate(self, limits: Sequence[Limit], cost: int = 1,
                 now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        args: list[int | str] = ["" if now_us is None else int(now_us), int(cost)]
        for limit in limits:
            args += (limit.interval_us, limit.tolerance_us,
                     1 if limit.shadow else 2 if limit.checked else 0)
        try:
            keys = [limit.key for limit in limits]
            values = SCRIPT(self.client, keys + [f"{key}:r" for key in keys], args)
            outcomes = [Outcome(values[i] == 1, values[i + 1], values[i + 2], values[i + 3])
                        for i in range(1, 4 * len(limits), 4)]
            allowed = values[0] == 1
        except (*REDIS_DOWN, ValueError, TypeError, IndexError) as err:
            # Unreachable, an error reply, or a reply that is not the script's.
            raise StoreUnavailable("The rate-limit store is unreachable.") from err
        return allowed, outcomes

    def refusals(self, limits: Sequence[Limit]) -> list[int | None]:
        """When each limit last refused (kept a day by ``gcra.lua``)."""
        try:
            stored = self.client.mget([f"{limit.key}:r" for limit in limits])
            return [None if value is None else int(value) for value in stored]
        except (*REDIS_DOWN, TypeError, ValueError) as err:
            raise StoreUnavailable("The rate-limit store is unreachable.") from err

    def peek(self, limits: Sequence[Limit], cost: int = 1,
             now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        """The keys' TATs and the server's clock in one round trip, decided here."""
        try:
            seconds, micros, *stored = PEEK(self.client, [limit.key for limit in limits], ())
            tats = [int(tat) if tat else None for tat in stored]
            now = int(seconds) * gcra.US + int(micros) if now_us is None else now_us
        except (*REDIS_DOWN, TypeError, ValueError) as err:
            raise StoreUnavailable("The rate-limit store is unreachable.") from err
        allowed, outcomes, _ = gcra.evaluate(limits, tats, now, cost)
        return allowed, outcomes
