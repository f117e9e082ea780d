"""The ``RESILIENCE_CRM`` settings dict, read lazily and reloaded on ``setting_changed``.

Nothing here copies a value at import time: every read goes through ``settings``, which
looks the dict up on first use and forgets it when a test or a deployment changes it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.module_loading import import_string

from resilience_crm.breakers.machine import Config
from resilience_crm.constants import DEFAULT_CIRCUITS, OP_CLASSES, SETTING_NAME

__all__ = ["BREAKER_DEFAULTS", "DEFAULTS", "DEFAULT_CIRCUITS", "OP_CLASSES", "SETTING_NAME",
           "settings"]

#: Breaker settings every circuit starts from (``core.Config``'s defaults);
#: ``CIRCUIT_DEFAULTS`` and ``CIRCUITS`` override them.
BREAKER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}

DEFAULTS: dict[str, Any] = {
    "STORE": "auto",
    "CACHE_ALIAS": "default",
    "DATABASE_ALIAS": None,
    "CIRCUIT_DEFAULTS": {},
    "CIRCUITS": {},
    "TIERS": {
        "anonymous": {"read": "60/min", "write": "10/min", "rpc": "10/min", "auth": "10/min"},
        "free": {"read": "120/min", "write": "30/min", "rpc": "30/min", "auth": "20/min"},
        "pro": {"read": "1200/min", "write": "300/min", "rpc": "300/min", "auth": "60/min"},
        "enterprise": {
            "read": "12000/min",
            "write": "3000/min",
            "rpc": "3000/min",
            "auth": "300/min",
        },
    },
    "DEFAULT_TIER": "free",
    "ANONYMOUS_TIER": "anonymous",
    "ENDPOINTS": {},
    "TRUSTED_PROXIES": 0,
    # While the rate-limit store is unreachable: True lets each process admit its share
    # (limit / EXPECTED_PROCESSES), False refuses with 503. Logins survive a Redis outage.
    "FAIL_OPEN": {"read": True, "write": True, "rpc": True, "auth": True},
    # The query guard (docs/provider.md): {alias: circuit}; every statement on these aliases,
    # from any code, passes that circuit. The alias's ENGINE must be a guard backend
    # (resilience_crm.guard.backends.postgresql or .sqlite3).
    "PROTECT_QUERIES": {},
    # {alias: seconds}: statement_timeout for every session on a PostgreSQL alias (calls
    # through protected set their own, from call_timeout). None by default.
    "QUERY_TIMEOUT": {},
    "FALLBACK_TTL": 60,
    "FALLBACK_STALE_TTL": 3600,
    # Database aliases of streaming replicas a read may fall back to before its stale cache
    # (docs/provider.md, "Read replicas"), each behind a circuit of its own; a replica
    # further behind than MAX_REPLICA_LAG seconds is skipped.
    "READ_REPLICAS": [],
    "MAX_REPLICA_LAG": 30,
    "METRICS_RETENTION_DAYS": 30,
    "SENTRY_ALERTS": True,
    # How long a worker trusts its local view of a circuit before asking the store again.
    # Forced states and resets reach every worker within this many seconds.
    "SNAPSHOT_TTL": 0.5,
    # After the shared store fails, a worker uses its own in-process breaker for this long
    # before it tries the store again.
    "STORE_RETRY_INTERVAL": 5.0,
    # Alert rules besides open/recovery (resilience_crm/observability/rules.py):
    # {rule: {...} or None}.
    "ALERT_RULES": {},
    # A bearer token that lets monitoring see /ready's details (queue counts, errors,
    # latencies) without a staff session. None: staff only.
    "MONITORING_TOKEN": None,
    # Rate limiting (docs/ratelimiting.md).
    # Where limits live: "auto" (Redis when CACHE_ALIAS is django-redis, else the database
    # on PostgreSQL, else memory), "redis", "database", "memory" or a dotted path to a
    # BaseLimiterStore subclass.
    "RATELIMIT_STORE": "auto",
    # Seconds one decision of the database limiter store may take (statement_timeout and the
    # wait for the reply); past it the limiter applies FAIL_OPEN.
    "RATELIMIT_STORE_TIMEOUT": 0.5,
    # Dotted path of a callable(request) -> tier name or None (None: the usual rules).
    "TIER_RESOLVER": None,
    # Seconds a worker trusts its cached tiers and tier assignments (admin edits apply
    # everywhere within this).
    "TIER_CACHE_TTL": 0.5,
    # Extra limits shared by every client: {op_class: rate or [rates]}.
    "GLOBAL_LIMITS": {},
    # Tiers and endpoints (URL names) whose limits are decided and reported, never enforced.
    "SHADOW_TIERS": [],
    "SHADOW_ENDPOINTS": [],
    # Limits of an op class whose circuit is open or half-open are multiplied by this (1: off).
    "ADAPTIVE_FACTOR": 0.5,
    # Staff users, and users with this permission ("app_label.codename"), are not limited.
    "EXEMPT_STAFF": False,
    "EXEMPT_PERMISSION": None,
    # Worker processes sharing the limits; with Redis down each keeps limit / this many.
    "EXPECTED_PROCESSES": 1,
    # Failed authentications per client address (grouped as the limiter groups addresses)
    # before further attempts from it are refused, before any lookup; None turns it off.
    "AUTH_FAILURES": "30/min",
}

STORE_ALIASES = {
    "redis": "resilience_crm.breakers.stores.redis.RedisStore",
    "database": "resilience_crm.breakers.stores.database.DatabaseStore",
    "memory": "resilience_crm.breakers.stores.memory.MemoryStore",
}


class ResilienceSettings:
    """Attribute access to ``RESILIENCE_CRM`` with defaults filled in."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTING_NAME, None) or {}
        return value if isinstance(value, dict) else {}

    def _load(self) -> dict[str, Any]:
        if self._cached is None:
            merged = dict(DEFAULTS)
            merged.update(self.user_settings)
            self._cached = merged
            # Later reads are plain attribute lookups: the rate limiter reads several
            # settings on every request.
            self.__dict__.update({name: merged[name] for name in DEFAULTS})
        return self._cached

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name not loaded yet (the first read, or the first after reload).
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid RESILIENCE_CRM setting: {name!r}")
        return self._load()[name]

    def reload(self) -> None:
        self._cached = None
        for name in DEFAULTS:
            self.__dict__.pop(name, None)

    def circuit_names(self) -> list[str]:
        names = list(DEFAULT_CIRCUITS)
        circuits = self.CIRCUITS if isinstance(self.CIRCUITS, dict) else {}
        names += [name for name in circuits if name not in names]
        guarded = self.PROTECT_QUERIES if isinstance(self.PROTECT_QUERIES, dict) else {}
        names += [name for name in guarded.values()
                  if isinstance(name, str) and name and name not in names]
        return names

    def guarding(self, alias: str) -> str | None:
        """The circuit ``PROTECT_QUERIES`` names for database ``alias``, ``None`` when none
        does (or the setting is malformed: checks E040-E042 report it)."""
        guarded = self.PROTECT_QUERIES
        circuit = guarded.get(alias) if isinstance(guarded, dict) else None
        return circuit if isinstance(circuit, str) and circuit else None

    def circuit_defaults(self) -> dict[str, Any]:
        """Breaker settings every circuit starts from: defaults, then ``CIRCUIT_DEFAULTS``."""
        config = dict(BREAKER_DEFAULTS)
        if isinstance(self.CIRCUIT_DEFAULTS, dict):  # anything else is reported by check E007
            config.update(self.CIRCUIT_DEFAULTS)
        return config

    def circuit_config(self, name: str) -> dict[str, Any]:
        """Breaker settings for ``name``: defaults, then ``CIRCUIT_DEFAULTS``, then ``CIRCUITS``."""
        config = self.circuit_defaults()
        circuits = self.CIRCUITS if isinstance(self.CIRCUITS, dict) else {}
        overrides = circuits.get(name)
        if isinstance(overrides, dict):  # anything else is reported by check E007
            config.update(overrides)
        return config

    def store_path(self) -> str:
        """The dotted path of the store class that ``STORE`` selects."""
        store = self.STORE
        if store == "auto":
            store = "redis" if cache_is_redis(self.CACHE_ALIAS) else "database"
        return STORE_ALIASES.get(store, store)

    def store_class(self) -> type:
        return import_string(self.store_path())


def database_alias() -> str:
    """The alias of the database the app's tables (the database limiter store's included)
    live on; the default one while ``DATABASE_ALIAS`` names none that exists (check E012)."""
    alias = settings.DATABASE_ALIAS
    return alias if isinstance(alias, str) and alias in connections.settings else (
        DEFAULT_DB_ALIAS)


def cache_backend(alias: str) -> str:
    return str(django_settings.CACHES.get(alias, {}).get("BACKEND", ""))


def cache_is_redis(alias: str) -> bool:
    return cache_backend(alias).startswith("django_redis.")


settings = ResilienceSettings()
