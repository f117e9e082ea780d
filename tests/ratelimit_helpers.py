"""Helpers shared by the rate-limit tests."""

from __future__ import annotations

import re
from typing import Any

from resilience_crm.models import Tier
from resilience_crm.ratelimit import limiter, tiers
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore
from tests.clock import Clock

_ITEM = re.compile(r'"(?P<name>[^"]+)"(?P<params>(?:;[a-z]+=[0-9.]+)*)')


def set_tier(name: str, limits: dict[str, Any]) -> Tier:
    """The tier row ``name`` with ``limits``, as an operator would save it."""
    tier, _ = Tier.objects.update_or_create(name=name, defaults={"limits": limits})
    tiers.clear()  # the test's transaction never commits, so on_commit would not run
    return tier


def on_clock(now: float = 1_700_000_000.0) -> Clock:
    """Limits in this process's memory, on a clock the test moves."""
    clock = Clock(now)
    limiter.set_store(MemoryLimiterStore(clock=clock))
    return clock


def structured(header: str) -> dict[str, dict[str, float]]:
    """``RateLimit`` / ``RateLimit-Policy`` as ``{policy: {param: value}}``."""
    found = {}
    for match in _ITEM.finditer(header):
        params = {}
        for part in match["params"].split(";")[1:]:
            key, value = part.split("=")
            params[key] = float(value)
        found[match["name"]] = params
    return found
