"""Rate-limit decisions: which limits apply to a request, and one store call to decide them.

For a principal (a user or an IP, see :mod:`resilience_crm.ratelimit.principals`), an op class and
an
endpoint (the resolved URL name), the limits are: the tier's rates for the op class (or the
user's own overrides), the endpoint's extra rates from ``ENDPOINTS``, and ``GLOBAL_LIMITS``.
All of them go to the store in one atomic step: consumed from all or from none.

When the circuit behind the op class is open or half-open, its limits shrink by
``ADAPTIVE_FACTOR``. Tiers in ``SHADOW_TIERS`` and endpoints in ``SHADOW_ENDPOINTS`` are
decided and reported but never reject. When the store is unreachable the decision falls back
to ``FAIL_OPEN``: an op class that fails open is limited by this process alone at
limit / ``EXPECTED_PROCESSES``; one that fails closed is refused. Either way the store is left
alone for ``STORE_RETRY_INTERVAL`` seconds, so an outage costs at most one socket timeout.
Every decision is counted as ``ratelimit_decisions{op_class, decision}``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from django.db import connections
from django.http import HttpRequest
from django.utils.module_loading import import_string

from resilience_crm import metrics
from resilience_crm.breakers import machine, registry
from resilience_crm.conf import DEFAULTS, cache_is_redis, database_alias, settings
from resilience_crm.constants import OP_CIRCUITS
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.ratelimit import gcra, tiers
from resilience_crm.ratelimit.gcra import Decision, Limit, Outcome
from resilience_crm.ratelimit.principals import Principal, principal
from resilience_crm.ratelimit.rates import Rate, parse_rates
from resilience_crm.ratelimit.stores.base import BaseLimiterStore
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore

logger = logging.getLogger("resilience_crm.ratelimit.limiter")

STORE_ALIASES = {
    "redis": "resilience_crm.ratelimit.stores.redis.RedisLimiterStore",
    "database": "resilience_crm.ratelimit.stores.database.DatabaseLimiterStore",
    "memory": "resilience_crm.ratelimit.stores.memory.MemoryLimiterStore",
}
#: Seconds between two sweeps of the store's expired keys (see :func:`sweep`).
SWEEP_EVERY = 60.0
#: The principal of ``GLOBAL_LIMITS``, shared by every client, and the hash tag of every key
#: of a decision that includes one of them.
GLOBAL = "global"

_lock = threading.Lock()
_store: BaseLimiterStore | None = None
_fallback = MemoryLimiterStore()
_store_down_until = 0.0
_swept_at: float | None = None
#: Limits built per principal, op class, endpoint and factor, with the rates they were
#: built from (settings changes forget them all).
_plans: dict[tuple[Any, ...], tuple[Any, tuple[Limit, ...]]] = {}
#: Past this many remembered plans, they are forgotten all at once.
MAX_PLANS = 50_000
#: Per (op class, tier, decision): the counters of decisions by op class and by tier.
_counters: dict[tuple[str, str, str], tuple[metrics.Key, metrics.Key]] = {}


def store_path() -> str:
    """The dotted path of the limiter store ``RATELIMIT_STORE`` selects: for ``"auto"``,
    Redis when ``CACHE_ALIAS`` is a django-redis cache, else the database on PostgreSQL,
    else memory."""
    store = settings.RATELIMIT_STORE
    if store == "auto":
        if cache_is_redis(settings.CACHE_ALIAS):
            store = "redis"
        elif connections[database_alias()].vendor == "postgresql":
            store = "database"
        else:
            store = "memory"
    return STORE_ALIASES.get(store, store)


def get_store() -> BaseLimiterStore:
    """The limiter store, built once per process (and again after settings change), which
    it says in the log as it is built."""
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                _store = import_string(store_path())()
                logger.info("Rate limits are kept by %s (RATELIMIT_STORE %r).",
                            type(_store).__name__, settings.RATELIMIT_STORE)
    return _store


def built_store() -> BaseLimiterStore | None:
    """The store this process uses, if it has built (or been given) one yet."""
    return _store


def set_store(store: BaseLimiterStore | None) -> None:
    """Use ``store`` in this process from now on (``None``: the one settings select again).

    For tests: e.g. a ``MemoryLimiterStore`` on a hand-moved clock.
    """
    global _store
    with _lock:
        _store = store


def clear() -> None:
    """Forget the store, the fallback counts and the outage; the next use rebuilds them."""
    global _store, _fallback, _store_down_until, _swept_at
    with _lock:
        _store = None
        _fallback = MemoryLimiterStore()
        _store_down_until = 0.0
        _swept_at = None
        _plans.clear()


def sweep() -> int:
    """The background flusher's task: at most every ``SWEEP_EVERY`` seconds, let the store
    this process decides with forget keys whose bucket is full again (a bounded batch; Redis
    and memory expire theirs by themselves). A process that has not decided anything yet
    sweeps nothing. An unreachable store is left for the next time; never raises for it."""
    global _swept_at
    now = time.monotonic()
    store = _store
    if store is None or _swept_at is not None and now - _swept_at < SWEEP_EVERY:
        return 0
    _swept_at = now
    try:
        return store.sweep()
    except StoreUnavailable as err:
        logger.info("Rate-limit store sweep skipped: %s", err.__cause__ or err)
        return 0


@functools.lru_cache(maxsize=1024)
def _rates(value: Any) -> tuple[Rate, ...]:
    return tuple(parse_rates(list(value) if isinstance(value, tuple) else value))


def rates(value: Any) -> tuple[Rate, ...]:
    """Parsed rates of one setting value, cached; an invalid value (reported by the checks
    and ``Tier.clean``) limits nothing rather than failing requests."""
    try:
        return _rates(tuple(value) if isinstance(value, list) else value)
    except (TypeError, ValueError) as err:
        logger.error("Ignoring invalid rate %r (%s).", value, err)
        return ()


def adaptive_factor(op_class: str) -> float:
    """``ADAPTIVE_FACTOR`` while the op class's circuit struggles (open, forced open or
    half-open), else 1.

    The state is this worker's own last view of the circuit: no store call, and no breaker
    built (a worker that never called through the circuit has not seen it struggle)."""
    factor = settings.ADAPTIVE_FACTOR
    circuit = OP_CIRCUITS.get(op_class)
    if circuit is None or factor >= 1:
        return 1.0
    breaker = registry.existing(circuit)
    if breaker is None or breaker.local_state() not in machine.STRUGGLING:
        return 1.0
    return float(factor)


def limits_for(who: Principal, op_class: str, endpoint: str | None,
               store: BaseLimiterStore, *, scale: float = 1.0) -> tuple[Limit, ...]:
    """Every limit that applies to one request of ``who``; ``scale`` multiplies each limit
    (never below one request). Remembered per principal until tiers or settings change."""
    factor = adaptive_factor(op_class) * scale
    tier_rates = (who.overrides[op_class] if op_class in who.overrides
                  else tiers.tier_limits(who.tier).get(op_class))
    memo_key = (who.key, who.tier, op_class, endpoint, factor, store)
    found = _plans.get(memo_key)
    # Tier rows and a user's own limits change without a signal here: compare the rates.
    if found is None or found[0] != tier_rates:
        found = (list(tier_rates) if isinstance(tier_rates, list) else tier_rates,
                 _build(who, op_class, endpoint, store, factor, tier_rates))
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[memo_key] = found
    return found[1]


def _build(who: Principal, op_class: str, endpoint: str | None, store: BaseLimiterStore,
           factor: float, tier_rates: Any) -> tuple[Limit, ...]:
    found: list[Limit] = []
    global_limits = settings.GLOBAL_LIMITS or {}
    # One hash tag for every key of the decision (one Redis Cluster slot, one script): the
    # shared limit's when there is one, else the client's own.
    tag = GLOBAL if op_class in global_limits else who.key

    def add(scope: str, principal_key: str, value: Any, shadow: bool, name: str) -> None:
        for rate in rates(value):
            limit = max(1, int(rate.limit * factor))
            window = int(rate.period) if rate.period.is_integer() else rate.period
            found.append(Limit(
                key=store.key(principal_key, f"{scope}{op_class}:{window}", tag),
                policy=f"{name}.{op_class}.{window}s", limit=limit, period=rate.period,
                shadow=shadow,
            ))

    add("", who.key, tier_rates, who.tier in settings.SHADOW_TIERS, who.tier)
    endpoints = settings.ENDPOINTS or {}
    if endpoint and endpoint in endpoints:
        add(f"e:{endpoint}:", who.key, endpoints[endpoint].get(op_class),
            endpoint in settings.SHADOW_ENDPOINTS, endpoint)
    if op_class in global_limits:
        add("", GLOBAL, global_limits[op_class], False, "global")
    return tuple(found)


class Check(NamedTuple):
    """Limits a request must conform to without spending them (an address's
    ``AUTH_FAILURES``): ``limits_of(store, scale)`` builds them, and a refusal by them is
    reported under ``op_class``."""

    limits_of: Callable[[BaseLimiterStore, float], tuple[Limit, ...]]
    op_class: str


def check(request: HttpRequest, op_class: str, endpoint: str | None = None,
          cost: int = 1, *, checking: Check | None = None) -> Decision:
    """Decide one request (of weight ``cost``); never raises for an unreachable store."""
    return decide(principal(request), op_class, endpoint, cost, checking=checking)


def decide(who: Principal, op_class: str, endpoint: str | None = None,
           cost: int = 1, *, checking: Check | None = None) -> Decision:
    """Decide ``cost`` requests of ``who`` for ``op_class`` on ``endpoint``.

    ``checking``: limits to check first, never charged; when they refuse, their refusal is the
    answer and nothing is charged. A store that :attr:`~BaseLimiterStore.checks_in_step`
    checks them in the same step as the request's own limits (one round trip), any other
    store a step before."""
    store = _store or get_store()
    limits = () if who.exempt else limits_for(who, op_class, endpoint, store)
    if checking is not None and not (limits and cost == 1 and store.checks_in_step):
        if refused := _refused_by(checking):
            return refused
        checking = None
    checked = () if checking is None else tuple([
        dataclasses.replace(limit, checked=True) for limit in checking.limits_of(store, 1.0)])
    if who.exempt:
        return _counted(Decision(allowed=True, source="exempt", op_class=op_class), who.tier)
    if not limits:
        return _counted(Decision(allowed=True, source="unlimited", op_class=op_class),
                        who.tier)
    answer = _shared(store, limits + checked, cost)
    if answer is None:  # both on this process's own counts
        if checking is not None and (refused := _refused_by(checking)):
            return refused
        return _counted(_without_store(who, op_class, endpoint, cost), who.tier)
    if checking is not None:
        allowed, outcomes = answer
        own = len(limits)
        if not all([outcome.conform for outcome in outcomes[own:]]):
            return gcra.decision(checked, False, outcomes[own:], op_class=checking.op_class)
        answer = allowed, outcomes[:own]
    return _counted(gcra.decision(limits, *answer, op_class=op_class), who.tier)


def _refused_by(checking: Check) -> Decision | None:
    """The refusal of ``checking``'s limits, peeked at on their own, or ``None``."""
    decision = decide_limits(checking.limits_of, op_class=checking.op_class, charge=False)
    return None if decision.allowed else decision


def decide_limits(limits_of: Callable[[BaseLimiterStore, float], tuple[Limit, ...]], *,
                  op_class: str, charge: bool = True) -> Decision:
    """Decide one request against the limits ``limits_of(store, scale)`` builds, charging
    them or only peeking (``charge=False``). While the shared store is unreachable the
    decision is this process's, at ``scale`` 1 / ``EXPECTED_PROCESSES``, as for an op class
    that fails open. Not counted in ``ratelimit_decisions``."""
    store = _store or get_store()
    limits = limits_of(store, 1.0)
    answer = _shared(store, limits, 1, charge)
    if answer is not None:
        return gcra.decision(limits, *answer, op_class=op_class)
    fallback = _fallback
    limits = limits_of(fallback, 1 / max(1, int(settings.EXPECTED_PROCESSES)))
    answer = fallback.evaluate(limits) if charge else fallback.peek(limits)
    return gcra.decision(limits, *answer, source="fallback", op_class=op_class)


def _shared(store: BaseLimiterStore, limits: tuple[Limit, ...], cost: int,
            charge: bool = True) -> tuple[bool, list[Outcome]] | None:
    """The shared store's answer, or ``None`` while it is unreachable (then it is left
    alone for ``STORE_RETRY_INTERVAL`` seconds)."""
    global _store_down_until
    if time.monotonic() < _store_down_until:
        return None
    try:
        return store.evaluate(limits, cost) if charge else store.peek(limits, cost)
    except StoreUnavailable as err:
        _store_down_until = time.monotonic() + settings.STORE_RETRY_INTERVAL
        metrics.inc("ratelimit_store_errors")
        logger.warning("Rate-limit store unreachable (%s); falling back for %ss.",
                       err.__cause__ or err, settings.STORE_RETRY_INTERVAL)
        return None


def fail_open(op_class: str) -> bool:
    """``FAIL_OPEN`` for ``op_class``; op classes the setting leaves out keep their default."""
    policy = {**DEFAULTS["FAIL_OPEN"], **(settings.FAIL_OPEN or {})}
    return bool(policy.get(op_class, True))


def _without_store(who: Principal, op_class: str, endpoint: str | None, cost: int) -> Decision:
    """The decision while the shared store is unreachable: ``FAIL_OPEN`` per op class."""
    if not fail_open(op_class):
        return Decision(allowed=False, source="unavailable", op_class=op_class,
                        retry_after=float(settings.STORE_RETRY_INTERVAL))
    fallback = _fallback
    processes = max(1, int(settings.EXPECTED_PROCESSES))
    limits = limits_for(who, op_class, endpoint, fallback, scale=1 / processes)
    allowed, outcomes = fallback.evaluate(limits, cost)
    return gcra.decision(limits, allowed, outcomes, source="fallback", op_class=op_class)


def _counted(decision: Decision, tier: str) -> Decision:
    if decision.source in ("exempt", "unlimited", "unavailable"):
        outcome = decision.source
    elif decision.shadowed:
        outcome = "shadow_rejected"
    else:
        outcome = "allowed" if decision.allowed else "rejected"
    if decision.source == "fallback":
        outcome = f"fallback_{outcome}"
    counters = _counters.get((decision.op_class, tier, outcome))
    if counters is None:
        counters = _counters[(decision.op_class, tier, outcome)] = (
            metrics.key("ratelimit_decisions", op_class=decision.op_class, decision=outcome),
            metrics.key("ratelimit_tier_decisions", tier=tier, decision=outcome),
        )
    metrics.add(counters[0])
    metrics.add(counters[1])
    return decision


os.register_at_fork(after_in_child=clear)
