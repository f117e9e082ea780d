"""System checks on the provider: where the write queue keeps writes while the database is
down (the only checks that talk to a server: they ask Redis with ``CONFIG GET``, through
:func:`~resilience_crm.provider.probe.redis_config`, and say so), whether a pooled
connection can arrive within a call's budget (:mod:`~resilience_crm.provider.deadlines`), and
whether a pool tries to connect again after an outage as soon as the circuits try again."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags, register

import resilience_crm.provider.deadlines as deadlines
import resilience_crm.provider.probe as probe
from resilience_crm import conf
from resilience_crm.checks import (
    CHECKS,
    TAG,
    Check,
    is_number,
    listing,
    merged_settings,
    pooled_databases,
    setting_path,
    settings_check,
    table,
    type_name,
)
from resilience_crm.routers import ResilienceRouter

MESSAGES = table({
    "QUEUE_WITHOUT_REDIS": Check(
        "resilience_crm.W010",
        (
            'The cache {alias!r} that RESILIENCE_CRM["CACHE_ALIAS"] names is not Redis, so the '
            "write queue has nowhere outside the database to keep writes: while the database is "
            "down, protected.submit() refuses them with 503 QUEUE_UNAVAILABLE."
        ),
        (
            'Point RESILIENCE_CRM["CACHE_ALIAS"] at a django-redis cache to queue writes during '
            "outages, or silence this warning if refusing them is what you want."
        ), warning=True,
    ),
    "QUEUE_NOT_PERSISTENT": Check(
        "resilience_crm.W011",
        (
            "{problem} (this check asked Redis with CONFIG GET): writes queued during a database "
            "outage are lost if Redis restarts before they are replayed."
        ),
        "Turn on appendonly (appendfsync everysec) or RDB snapshots in redis.conf.",
        warning=True,
    ),
    "QUEUE_EVICTABLE": Check(
        "resilience_crm.W013",
        (
            "{problem} (this check asked Redis with CONFIG GET): once Redis reaches maxmemory it "
            "may evict the write queue's stream, losing every write queued during a database "
            "outage."
        ),
        (
            "Set maxmemory-policy to noeviction, or to a volatile-* policy (the stream has no "
            "TTL, so those never evict it), or keep the queue on a Redis of its own."
        ),
        warning=True,
    ),
    "POOL_WAIT_OVER_BUDGET": Check(
        "resilience_crm.W012",
        (
            'settings.DATABASES["{alias}"]["OPTIONS"]["pool"] waits up to {seconds}s for a '
            "connection, not less than the {limit}s call_timeout of circuit {circuit!r}: on a "
            "stalled database a request waits past its deadline."
        ),
        (
            'Set "timeout" in the pool options below the shortest call_timeout, e.g. '
            '{"pool": {"timeout": 1.0}}; psycopg_pool waits 30 s by default.'
        ), warning=True,
    ),
    "POOL_RECONNECT_OVER_RESET": Check(
        "resilience_crm.W085",
        (
            'settings.DATABASES["{alias}"]["OPTIONS"]["pool"] retries a failed connect for up '
            "to {seconds}s (reconnect_timeout), backing off 1, 2, 4 s... meanwhile, longer "
            "than the {limit}s reset_timeout of circuit {circuit!r}: after an outage the pool "
            "may try again only that long after the database is back, and until then every "
            "half-open trial finds no connection and opens the circuit again."
        ),
        (
            'Set "reconnect_timeout" in the pool options to at most the shortest '
            'reset_timeout, e.g. {"pool": {"reconnect_timeout": 2.0}}: the pool then gives up '
            "its backoff and the next request connects at once; psycopg_pool retries for 300 s "
            "by default."
        ), warning=True,
    ),
    "READ_REPLICAS_INVALID": Check(
        "resilience_crm.E050",
        "{path} must be a list of aliases in settings.DATABASES; {problem}.",
        "Databases: {valid}.",
    ),
    "READ_REPLICAS_WITHOUT_ROUTER": Check(
        "resilience_crm.W050",
        (
            "{path} names replicas but resilience_crm.routers.ResilienceRouter is not the first "
            "of DATABASE_ROUTERS: a read that falls back to a replica still asks the primary."
        ),
        'Put "resilience_crm.routers.ResilienceRouter" first in DATABASE_ROUTERS.',
        warning=True,
    ),
})


@register(TAG, Tags.caches, deploy=True)
def check_write_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: where writes go while the database is down, and whether Redis
    keeps them (persistence, eviction), asked of Redis itself."""
    config = merged_settings()
    if config is None or not isinstance(config["CACHE_ALIAS"], str):
        return []
    alias = config["CACHE_ALIAS"]
    if alias not in django_settings.CACHES:
        return []  # E011
    if not conf.cache_is_redis(alias):
        return [CHECKS["QUEUE_WITHOUT_REDIS"](alias=alias)]
    return [CHECKS[key](problem=problem) for key, problem in (
        ("QUEUE_NOT_PERSISTENT", probe.persistence_problem()),
        ("QUEUE_EVICTABLE", probe.eviction_problem())) if problem is not None]


@settings_check(Tags.database)
def check_pool_timeout(config: dict[str, Any]) -> list[CheckMessage]:
    """A request must not wait longer for a pooled connection than its call's budget."""
    return _pool_over("POOL_WAIT_OVER_BUDGET", deadlines.pool_timeout, "call_timeout",
                      operator.ge)


@settings_check(Tags.database)
def check_pool_reconnect(config: dict[str, Any]) -> list[CheckMessage]:
    """A pool must try to connect again at least as often as a circuit tries a half-open
    trial, or the circuit stays open past an outage for as long as the pool backs off."""
    return _pool_over("POOL_RECONNECT_OVER_RESET", deadlines.pool_reconnect_timeout,
                      "reset_timeout", operator.gt)


def _pool_over(key: str, seconds_of: Callable[[Any], Any], breaker_key: str,
               over: Callable[[Any, Any], bool]) -> list[CheckMessage]:
    """``key``'s warning for each pooled database whose ``seconds_of(pool)`` is ``over`` the
    smallest ``breaker_key`` of any circuit (that circuit named in the message)."""
    limits = {}
    for name in conf.settings.circuit_names():
        value = conf.settings.circuit_config(name)[breaker_key]
        if is_number(value):
            limits[name] = value
    if not limits:
        return []  # reported by check_circuits
    circuit = min(limits, key=limits.__getitem__)
    return [CHECKS[key](alias=alias, seconds=seconds, limit=limits[circuit], circuit=circuit)
            for alias, pool in pooled_databases()
            if is_number(seconds := seconds_of(pool)) and over(seconds, limits[circuit])]


@settings_check(Tags.database)
def check_read_replicas(config: dict[str, Any]) -> list[CheckMessage]:
    """``READ_REPLICAS`` names databases, and the router that sends reads there is first."""
    replicas, path = config["READ_REPLICAS"], setting_path("READ_REPLICAS")
    check = CHECKS["READ_REPLICAS_INVALID"]
    hint = check.hint_for(valid=listing(django_settings.DATABASES))
    if not isinstance(replicas, (list, tuple)):
        return [check(path=path, problem=f"it is a {type_name(replicas)}", hint=hint)]
    unknown = [alias for alias in replicas if alias not in django_settings.DATABASES]
    if unknown:
        return [check(path=path, problem=f"{listing(unknown)} is not one", hint=hint)]
    routers = list(django_settings.DATABASE_ROUTERS)
    if replicas and not (routers and _is_router(routers[0])):
        return [CHECKS["READ_REPLICAS_WITHOUT_ROUTER"](path=path)]
    return []


def _is_router(entry: Any) -> bool:
    if isinstance(entry, str):
        return entry == "resilience_crm.routers.ResilienceRouter"
    return isinstance(entry, ResilienceRouter) or (
        isinstance(entry, type) and issubclass(entry, ResilienceRouter))
