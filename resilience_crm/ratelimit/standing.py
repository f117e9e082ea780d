"""Where a principal stands against each of its limits, for operators asking "why is this
user limited?" (the ``resilience_limits`` command): remaining, reset and the last refusal of
every policy, read from the store without charging anything."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import resilience_crm.ratelimit.limiter as limiter
from resilience_crm.conf import settings
from resilience_crm.constants import OP_CLASSES
from resilience_crm.ratelimit.gcra import US, Limit
from resilience_crm.ratelimit.principals import Principal


class Standing(NamedTuple):
    """One policy of one principal, now."""

    policy: str
    op_class: str
    limit: int
    window: float  # seconds
    remaining: int
    reset: float  # seconds until the quota is whole again
    shadow: bool
    #: When it last refused a request; ``None`` when it has not (within the store's memory)
    #: or the store keeps no record (``recorded`` False).
    last_refusal: dt.datetime | None
    recorded: bool


def limits_of(who: Principal) -> list[tuple[str, Limit]]:
    """Every limit that applies to ``who``, each once, with its op class: the tier's (or the
    user's own), each endpoint's in ``ENDPOINTS`` and the global ones."""
    store = limiter.get_store()
    found: dict[str, tuple[str, Limit]] = {}
    endpoints = [None, *sorted(settings.ENDPOINTS or {})]
    for op_class in OP_CLASSES:
        for endpoint in endpoints:
            for limit in limiter.limits_for(who, op_class, endpoint, store):
                found.setdefault(limit.key, (op_class, limit))
    return list(found.values())


def standing(who: Principal) -> list[Standing]:
    """Each policy of ``who`` as the store has it now; raises ``StoreUnavailable`` when the
    store cannot be reached."""
    store = limiter.get_store()
    found = limits_of(who)
    limits = [limit for _, limit in found]
    if not limits:
        return []
    _, outcomes = store.peek(limits, cost=0)
    refusals = store.refusals(limits)
    recorded = bool(store.records_refusals)
    answer = []
    for (op_class, limit), outcome, refused in zip(found, outcomes, refusals, strict=True):
        at = None if refused is None else dt.datetime.fromtimestamp(refused / US, dt.UTC)
        answer.append(Standing(limit.policy, op_class, limit.limit, limit.period,
                               outcome.remaining, outcome.reset_us / US, limit.shadow, at,
                               recorded))
    return answer
