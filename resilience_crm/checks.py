"""System checks for the ``RESILIENCE_CRM`` settings dict.

They run on ``manage.py check``, ``runserver``, ``migrate`` and the test runner, under the
tag ``resilience_crm`` (``manage.py check --tag resilience_crm`` runs only these). Ids are
stable: silence one with ``SILENCED_SYSTEM_CHECKS``. A check never raises on a malformed
configuration; it reports it.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string

from resilience_crm import conf, transactions
from resilience_crm.breakers import machine
from resilience_crm.breakers.config import exception_errors
from resilience_crm.breakers.stores.base import BaseStore
from resilience_crm.observability.rules import DEFAULT_RULES
from resilience_crm.provider import deadlines, probe
from resilience_crm.ratelimit.rates import UNKNOWN_OP_CLASS, limits_errors, parse_rate
from resilience_crm.ratelimit.stores.base import BaseLimiterStore
from resilience_crm.routers import ResilienceRouter, same_database

TAG = "resilience_crm"
SETTING = conf.SETTING_NAME

#: Breaker setting names a circuit may configure.
BREAKER_KEYS = tuple(f.name for f in fields(machine.Config))
#: Settings that take a number of seconds (or days) and must not be negative.
DURATION_KEYS = (
    "FALLBACK_TTL", "FALLBACK_STALE_TTL", "METRICS_RETENTION_DAYS", "SNAPSHOT_TTL",
    "STORE_RETRY_INTERVAL", "TIER_CACHE_TTL",
)
#: Cache backends whose contents one process cannot share with another.
PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": "keeps its data inside each process",
    "django.core.cache.backends.dummy.DummyCache": "keeps no data at all",
}
#: Parts of an ENGINE path that mark a PostgreSQL backend, whose pool is psycopg_pool.
POSTGRES_ENGINES = ("postgresql", "postgis")
#: The longest ``SNAPSHOT_TTL`` that keeps the promise "an admin change reaches every worker
#: within one second".
MAX_SNAPSHOT_TTL = 1
#: django-redis's serializer when a cache's OPTIONS name none.
PICKLE_SERIALIZER = "django_redis.serializers.pickle.PickleSerializer"
#: ``RATELIMIT_STORE`` names besides "auto".
RATELIMIT_STORES = ("redis", "memory")


@dataclass(frozen=True)
class Check:
    """One message a check can give: its stable id, its text and its hint."""

    id: str
    message: str
    hint: str | None = None
    warning: bool = False

    def hint_for(self, **fields: Any) -> str:
        """The usual hint, formatted with ``fields``."""
        return (self.hint or "").format(**fields)

    def __call__(self, *, hint: str | None = None, **fields: Any) -> CheckMessage:
        """The message, its text formatted with ``fields``; ``hint`` replaces the usual one."""
        level = CheckWarning if self.warning else Error
        return level(self.message.format(**fields), hint=self.hint if hint is None else hint,
                     id=self.id)


#: Every message the checks give, by key; ids never change (silence them by id).
CHECKS: dict[str, Check] = {
    "SETTING_NOT_DICT": Check(
        "resilience_crm.E001",
        "settings.RESILIENCE_CRM must be a dict, not {type}.",
        "Set RESILIENCE_CRM = {...} with the keys described in docs/settings.md.",
    ),
    "UNKNOWN_KEY": Check(
        "resilience_crm.E002",
        "{path} is not a resilience_crm setting.",
        "Valid keys: {valid}.",
    ),
    "LIMITS_SHAPE": Check(
        "resilience_crm.E003",
        "{path} must be {expected}, not {type}.",
        None,
    ),
    "RATE_INVALID": Check(
        "resilience_crm.E004",
        "{path} is not a valid rate: {error}.",
        'Write a rate as "<requests>/<period>": "100/min", "10/5s", "1000/hour".',
    ),
    "OP_CLASS_UNKNOWN": Check(
        "resilience_crm.E005",
        "{path}: {op_class!r} is not an operation class.",
        "Operation classes: {valid}.",
    ),
    "TIER_UNKNOWN": Check(
        "resilience_crm.E006",
        '{path} is {value!r}, which is not one of the tiers in RESILIENCE_CRM["TIERS"].',
        "Tiers: {valid}.",
    ),
    "CIRCUITS_SHAPE": Check(
        "resilience_crm.E007",
        "{path} must be {expected}, not {type}.",
        'Example: {"crm.read": {"failure_threshold": 10, "reset_timeout": 60}}.',
    ),
    "BREAKER_INVALID": Check(
        "resilience_crm.E008",
        "{path} {error}.",
        "See 'Breaker settings' in docs/settings.md for each setting's range.",
    ),
    "STORE_INVALID": Check(
        "resilience_crm.E009",
        (
            "{path} is {value!r}, which is neither a store name nor a dotted path to a store class "
            "({reason})."
        ),
        (
            'Use "auto", "redis", "database", "memory", or the dotted path of a subclass of '
            "resilience_crm.breakers.stores.base.BaseStore."
        ),
    ),
    "STORE_REDIS_WITHOUT_REDIS_CACHE": Check(
        "resilience_crm.E010",
        (
            "{path} selects the Redis store but the cache {alias!r} that "
            'RESILIENCE_CRM["CACHE_ALIAS"] names uses {backend!r}, not django-redis.'
        ),
        (
            'Point CACHE_ALIAS at a cache with BACKEND "django_redis.cache.RedisCache", or use '
            'STORE "auto" to pick the database store when there is no Redis.'
        ),
    ),
    "CACHE_ALIAS_UNKNOWN": Check(
        "resilience_crm.E011",
        "{path} is {value!r}, which is not a cache in settings.CACHES.",
        "Caches: {valid}.",
    ),
    "DATABASE_ALIAS_UNKNOWN": Check(
        "resilience_crm.E012",
        "{path} is {value!r}, which is not a database in settings.DATABASES.",
        "Use None for the default database, or one of: {valid}.",
    ),
    "FAIL_OPEN_INVALID": Check(
        "resilience_crm.E013",
        "{path} must be {expected}, not {value!r}.",
        'Example: {"read": True, "write": True, "rpc": True, "auth": False}.',
    ),
    "TRUSTED_PROXIES_INVALID": Check(
        "resilience_crm.E014",
        "{path} must be a whole number of at least 0, not {value!r}.",
        (
            "Count the proxies in front of the app that append to X-Forwarded-For; 0 trusts none."
        ),
    ),
    "DURATION_INVALID": Check(
        "resilience_crm.E015",
        "{path} must be a number of at least 0, not {value!r}.",
        "Use 0 to turn it off, where that is meaningful.",
    ),
    "ALERT_RULES_INVALID": Check(
        "resilience_crm.E019",
        "{path} {error}.",
        'Example: {{"failure_rate": {{"threshold": 0.2}}, "flapping": None}}. Rules: {valid}.',
    ),
    "SENTRY_ALERTS_INVALID": Check(
        "resilience_crm.E016",
        "{path} must be True or False, not {value!r}.",
        None,
    ),
    "POOL_WITHOUT_PSYCOPG_POOL": Check(
        "resilience_crm.E017",
        (
            'settings.DATABASES["{alias}"]["OPTIONS"]["pool"] is set but psycopg_pool cannot be '
            "imported."
        ),
        'Install psycopg with the pool extra: pip install "psycopg[pool]".',
    ),
    "MONITORING_ACCESS_INVALID": Check(
        "resilience_crm.E018",
        "{path} must be None or a non-empty string, not {value!r}.",
        (
            'Set it from the environment, e.g. os.environ.get("RESILIENCE_MONITORING_TOKEN"), and '
            'send it as "Authorization: Bearer <token>".'
        ),
    ),
    "CHECK_FAILED": Check(
        "resilience_crm.E099",
        "{check} could not check settings.RESILIENCE_CRM: {error!r}.",
        "This is a bug in resilience_crm; please report it with your settings.",
    ),
    "SNAPSHOT_TTL_SLOW": Check(
        "resilience_crm.W001",
        (
            "{path} is {value!r}: a forced state or reset made in the admin takes up to that many "
            "seconds to reach every worker, longer than the one second the app promises."
        ),
        "Use a value of at most 1; 0.5 is the default.", warning=True,
    ),
    "STORE_PER_PROCESS": Check(
        "resilience_crm.W002",
        (
            "{path} selects {store!r}, which keeps circuit state inside each process: with more "
            "than one worker, each opens and closes its circuits on its own."
        ),
        (
            'Use "auto", "redis" or "database" when the app runs in more than one process. Silence '
            "this warning if it never does."
        ), warning=True,
    ),
    "CACHE_PER_PROCESS": Check(
        "resilience_crm.W003",
        (
            'The cache {alias!r} that RESILIENCE_CRM["CACHE_ALIAS"] names uses {backend!r}, which '
            "{why}: with more than one worker, rate limits and fallback data are not shared."
        ),
        (
            'Point RESILIENCE_CRM["CACHE_ALIAS"] at a Redis cache (django-redis) when the app runs '
            "in more than one process. Silence this warning if it never does."
        ), warning=True,
    ),
    "STORE_IN_REQUEST_TRANSACTION": Check(
        "resilience_crm.W004",
        (
            "The database store keeps live circuit state on the database {alias!r}, which has "
            "ATOMIC_REQUESTS: a request that fails rolls back the state change its failure made."
        ),
        (
            "Add a second alias for the same database without ATOMIC_REQUESTS, name it in "
            'RESILIENCE_CRM["DATABASE_ALIAS"] and add resilience_crm.routers.ResilienceRouter to '
            "DATABASE_ROUTERS, or use the Redis store."
        ), warning=True,
    ),
    "VIEW_IN_REQUEST_TRANSACTION": Check(
        "resilience_crm.W005",
        (
            "The view at {route!r} calls protected inside the transaction ATOMIC_REQUESTS opens "
            "on {aliases}: while that database is down it answers 500 before protected can "
            "serve its cache or queue its write."
        ),
        (
            "Decorate the view with resilience_crm.transactions.non_atomic, or mix "
            "resilience_crm.drf.FallbackHeadersMixin into its DRF class; each protected call "
            "keeps a transaction of its own."
        ), warning=True,
    ),
    "RATELIMIT_STORE_INVALID": Check(
        "resilience_crm.E030",
        (
            "{path} is {value!r}, which is neither a limiter store name nor a dotted path to a "
            "limiter store class ({reason})."
        ),
        (
            'Use "auto", "redis", "memory", or the dotted path of a subclass of '
            "resilience_crm.ratelimit.stores.base.BaseLimiterStore."
        ),
    ),
    "RATELIMIT_STORE_REDIS_WITHOUT_REDIS_CACHE": Check(
        "resilience_crm.E031",
        (
            "{path} selects the Redis limiter store but the cache {alias!r} that "
            'RESILIENCE_CRM["CACHE_ALIAS"] names uses {backend!r}, not django-redis.'
        ),
        'Point CACHE_ALIAS at a django-redis cache, or use RATELIMIT_STORE "auto".',
    ),
    "TIER_RESOLVER_INVALID": Check(
        "resilience_crm.E032",
        "{path} is {value!r}, which is not a callable's dotted path ({reason}).",
        (
            "Use None, or the dotted path of a function taking the request and returning a tier "
            'name or None, e.g. "myproject.limits.tier_for".'
        ),
    ),
    "SHADOW_INVALID": Check(
        "resilience_crm.E033",
        "{path} must be a list of names, not {value!r}.",
        'Example: ["free"] for SHADOW_TIERS, ["contact-list"] for SHADOW_ENDPOINTS.',
    ),
    "ADAPTIVE_FACTOR_INVALID": Check(
        "resilience_crm.E034",
        "{path} must be a number above 0 and at most 1, not {value!r}.",
        "0.5 halves an op class's limits while its circuit is open; 1 is off.",
    ),
    "EXEMPTION_INVALID": Check(
        "resilience_crm.E035",
        "{path} must be {expected}, not {value!r}.",
        (
            'EXEMPT_STAFF is True or False; EXEMPT_PERMISSION is None or "app_label.codename".'
        ),
    ),
    "EXPECTED_PROCESSES_INVALID": Check(
        "resilience_crm.E036",
        "{path} must be a whole number of at least 1, not {value!r}.",
        "Count the worker processes across every server; 1 if unsure.",
    ),
    "RATELIMIT_STORE_PER_PROCESS": Check(
        "resilience_crm.W020",
        (
            "Rate limits are kept inside each process ({store!r}) while {path} says {processes} "
            "processes serve the app: each one admits the full limit."
        ),
        (
            "Point CACHE_ALIAS at a django-redis cache so every process shares the limits, or set "
            "EXPECTED_PROCESSES to 1 if there is only one."
        ), warning=True,
    ),
    "TIER_CACHE_TTL_SLOW": Check(
        "resilience_crm.W021",
        (
            "{path} is {value!r}: a tier edited in the admin takes up to that many seconds to "
            "reach every worker, longer than the one second the app promises."
        ),
        "Use a value of at most 1; 0.5 is the default.", warning=True,
    ),
    "SHADOW_TIER_UNKNOWN": Check(
        "resilience_crm.W022",
        "{path} names {value!r}, which is not one of the tiers in TIERS.",
        "Tiers: {valid}.", warning=True,
    ),
    "RATELIMIT_STORE_CANNOT_PEEK": Check(
        "resilience_crm.W023",
        (
            "{path} is {store!r}, which cannot peek at its limits, while AUTH_FAILURES is on: "
            "failed authentications are counted but no address is ever refused for them."
        ),
        "Implement peek() on the store, or set AUTH_FAILURES to None.", warning=True,
    ),
    "DATABASE_ALIAS_OTHER_DATABASE": Check(
        "resilience_crm.W030",
        (
            "{path} is {alias!r}, which is not the default database: the app's foreign keys to "
            "the user model (event actors, forced_by, tier assignments) cannot cross databases."
        ),
        (
            "Make {alias!r} a second alias of the default database (the same ENGINE, NAME, HOST "
            "and PORT), e.g. without ATOMIC_REQUESTS; see docs/settings.md."
        ), warning=True,
    ),
    "DATABASE_ALIAS_WITHOUT_ROUTER": Check(
        "resilience_crm.W031",
        (
            "{path} is {alias!r} but resilience_crm.routers.ResilienceRouter is not in "
            "DATABASE_ROUTERS: the app's tables stay on the default database."
        ),
        'Add "resilience_crm.routers.ResilienceRouter" to DATABASE_ROUTERS.', warning=True,
    ),
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
            "{problem}: writes queued during a database outage are lost if Redis restarts "
            "before they are replayed."
        ),
        "Turn on appendonly (appendfsync everysec) or RDB snapshots in redis.conf.",
        warning=True,
    ),
    "QUEUE_EVICTABLE": Check(
        "resilience_crm.W013",
        (
            "{problem}: once Redis reaches maxmemory it may evict the write queue's stream, "
            "losing every write queued during a database outage."
        ),
        (
            "Set maxmemory-policy to noeviction, or to a volatile-* policy (the stream has no "
            "TTL, so those never evict it), or keep the queue on a Redis of its own."
        ),
        warning=True,
    ),
    "CACHE_PICKLES": Check(
        "resilience_crm.W014",
        (
            "The cache {alias!r} that RESILIENCE_CRM[\"CACHE_ALIAS\"] names pickles its values: "
            "whoever can write to that Redis can run code in every worker that reads them, or "
            "plant a cached value such as a token's user."
        ),
        (
            'Add "SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer" to the '
            "cache's OPTIONS."
        ),
        warning=True,
    ),
    "POOL_WAIT_OVER_BUDGET": Check(
        "resilience_crm.W012",
        (
            'settings.DATABASES["{alias}"]["OPTIONS"]["pool"] waits up to {timeout}s for a '
            "connection, not less than the {budget}s call_timeout of circuit {circuit!r}: on a "
            "stalled database a request waits past its deadline."
        ),
        (
            'Set "timeout" in the pool options below the shortest call_timeout, e.g. '
            '{"pool": {"timeout": 1.0}}; psycopg_pool waits 30 s by default.'
        ), warning=True,
    ),
}

#: The ids by key, for ``SILENCED_SYSTEM_CHECKS`` lists and tests: ``Codes.UNKNOWN_KEY``.
Codes = SimpleNamespace(**{key: check.id for key, check in CHECKS.items()})

#: Hints that replace a check's usual one where there is something closer to say.
HINT_UNKNOWN_KEY_CLOSE = "Did you mean {close!r}? Valid keys: {valid}."
HINT_TIERS_SHAPE = 'Example: {"free": {"read": "120/min", "write": ["5/s", "30/min"]}}.'
HINT_ENDPOINTS_SHAPE = 'Example: {"contact-list": {"read": "10/s"}}, keyed by URL name.'
HINT_GLOBAL_LIMITS_SHAPE = 'Example: {"write": "1000/s"}: shared by every client.'
HINT_OP_CLASS_UNKNOWN_CLOSE = "Did you mean {close!r}? Operation classes: {valid}."
HINT_BREAKER_UNKNOWN = "Breaker settings: {valid}."
HINT_BREAKER_UNKNOWN_CLOSE = "Did you mean {close!r}? Breaker settings: {valid}."


# Helpers ----------------------------------------------------------------------------------


def _path(*keys: Any) -> str:
    """``RESILIENCE_CRM["CIRCUITS"]["crm.read"]`` for keys ``("CIRCUITS", "crm.read")``."""
    return SETTING + "".join(f'["{key}"]' if isinstance(key, str) else f"[{key!r}]"
                             for key in keys)


def _type(value: Any) -> str:
    return type(value).__name__


def _names(values: Iterable[Any]) -> str:
    return ", ".join(str(value) for value in values) or "(none)"


def _closest(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(choices), n=1)
    if not matches:
        upper = {choice.upper(): choice for choice in choices}
        return upper.get(word.upper())
    return matches[0]


def _choice_hint(word: Any, choices: Iterable[str], plain: str | None, close: str) -> str:
    choices = list(choices)
    match = _closest(word, choices)
    valid = _names(choices)
    return close.format(close=match, valid=valid) if match else (plain or "").format(valid=valid)


def _user_settings() -> dict[str, Any] | None:
    """The ``RESILIENCE_CRM`` dict as written, or ``None`` when it is not a dict."""
    value = getattr(django_settings, SETTING, None)
    if value is None:
        return {}
    return value if isinstance(value, dict) else None


def _config() -> dict[str, Any] | None:
    """``DEFAULTS`` overlaid with the user's settings, or ``None`` when those are not a dict."""
    user = _user_settings()
    return None if user is None else conf.DEFAULTS | user


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check(*tags: str) -> Callable[[Callable[[dict[str, Any]], list[CheckMessage]]], Any]:
    """Register a check on the merged settings; it is skipped when they are not a dict, and
    anything it raises is reported rather than breaking ``manage.py``."""

    def decorate(func: Callable[[dict[str, Any]], list[CheckMessage]]) -> Any:
        def check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
            config = _config()
            if config is None:
                return []
            try:
                return func(config)
            except Exception as err:  # noqa: BLE001  (a check must report, never crash)
                return [CHECKS["CHECK_FAILED"](check=func.__name__, error=err)]

        # Not functools.wraps: Django inspects the signature, which must take **kwargs.
        check.__name__, check.__qualname__ = func.__name__, func.__qualname__
        check.__doc__, check.__module__ = func.__doc__, func.__module__
        return register(TAG, *tags)(check)

    return decorate


# Checks -----------------------------------------------------------------------------------


@register(TAG)
def check_setting_type(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(django_settings, SETTING, None)
    if value is None or isinstance(value, dict):
        return []
    return [CHECKS["SETTING_NOT_DICT"](type=_type(value))]


@_check()
def check_unknown_keys(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in config:
        if key not in conf.DEFAULTS:
            hint = _choice_hint(key, conf.DEFAULTS, CHECKS["UNKNOWN_KEY"].hint,
                                HINT_UNKNOWN_KEY_CLOSE)
            errors.append(CHECKS["UNKNOWN_KEY"](path=_path(key), hint=hint))
    return errors


def _limits_errors(path: tuple[Any, ...], limits: Mapping[Any, Any]) -> list[CheckMessage]:
    """Errors in one ``{op_class: rate or [rates]}`` mapping at ``path``."""
    errors: list[CheckMessage] = []
    for op_class, kind, message in limits_errors(limits, conf.OP_CLASSES):
        if kind == UNKNOWN_OP_CLASS:
            hint = _choice_hint(op_class, conf.OP_CLASSES, CHECKS["OP_CLASS_UNKNOWN"].hint,
                                HINT_OP_CLASS_UNKNOWN_CLOSE)
            errors.append(CHECKS["OP_CLASS_UNKNOWN"](
                path=_path(*path), op_class=op_class, hint=hint,
            ))
        else:
            errors.append(CHECKS["RATE_INVALID"](path=_path(*path, op_class), error=message))
    return errors


def _table_errors(key: str, table: Any, expected: str, hint: str) -> list[CheckMessage]:
    """Errors in ``TIERS`` or ``ENDPOINTS``: ``{name: {op_class: rate or [rates]}}``."""
    if not isinstance(table, dict):
        return [CHECKS["LIMITS_SHAPE"](
            path=_path(key), expected=expected, type=_type(table), hint=hint,
        )]
    errors: list[CheckMessage] = []
    for name, limits in table.items():
        if not isinstance(name, str):
            errors.append(CHECKS["LIMITS_SHAPE"](
                path=_path(key), expected="keyed by strings",
                type=f"the {_type(name)} key {name!r}", hint=hint,
            ))
        elif not isinstance(limits, dict):
            errors.append(CHECKS["LIMITS_SHAPE"](
                path=_path(key, name), expected="a dict of {op_class: rate or [rates]}",
                type=_type(limits), hint=hint,
            ))
        else:
            errors += _limits_errors((key, name), limits)
    return errors


@_check()
def check_rate_limits(config: dict[str, Any]) -> list[CheckMessage]:
    tiers = config["TIERS"]
    errors = _table_errors("TIERS", tiers, "a dict of {tier: {op_class: rate or [rates]}}",
                           HINT_TIERS_SHAPE)
    endpoints = {} if config["ENDPOINTS"] is None else config["ENDPOINTS"]
    errors += _table_errors("ENDPOINTS", endpoints,
                            "a dict of {url_name: {op_class: rate or [rates]}}",
                            HINT_ENDPOINTS_SHAPE)
    if isinstance(tiers, dict):
        names = [name for name in tiers if isinstance(name, str)]
        for key in ("DEFAULT_TIER", "ANONYMOUS_TIER"):
            value = config[key]
            if not isinstance(value, str) or value not in tiers:
                errors.append(CHECKS["TIER_UNKNOWN"](
                    path=_path(key), value=value,
                    hint=CHECKS["TIER_UNKNOWN"].hint_for(valid=_names(names)),
                ))
    return errors


def _breaker_errors(path: tuple[Any, ...],
                    merged: dict[str, Any]) -> list[tuple[str, str, CheckMessage]]:
    """``(key, message, error)`` for each problem in one circuit's merged breaker settings."""
    problems = machine.config_errors(merged) or exception_errors(merged)
    found = []
    for key, message in problems:
        hint: str | None
        if message == "is not a breaker setting":
            hint = _choice_hint(key, BREAKER_KEYS, HINT_BREAKER_UNKNOWN,
                                HINT_BREAKER_UNKNOWN_CLOSE)
        else:
            hint = CHECKS["BREAKER_INVALID"].hint
            other = message.rsplit(" ", 1)[-1]
            if other != key and other in merged and key in merged:  # a rule between two keys
                message += f" ({key} is {merged[key]!r}, {other} is {merged[other]!r})"
        error = CHECKS["BREAKER_INVALID"](path=_path(*path, key), error=message, hint=hint)
        found.append((key, message, error))
    return found


@_check()
def check_circuits(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    defaults = {} if config["CIRCUIT_DEFAULTS"] is None else config["CIRCUIT_DEFAULTS"]
    default_problems: set[tuple[str, str]] = set()
    if not isinstance(defaults, dict):
        errors.append(CHECKS["CIRCUITS_SHAPE"](
            path=_path("CIRCUIT_DEFAULTS"), expected="a dict of breaker settings",
            type=_type(defaults), hint=CHECKS["BREAKER_INVALID"].hint,
        ))
        defaults = {}
    else:
        for key, message, error in _breaker_errors(("CIRCUIT_DEFAULTS",),
                                                   conf.BREAKER_DEFAULTS | defaults):
            default_problems.add((key, message))
            errors.append(error)

    circuits = {} if config["CIRCUITS"] is None else config["CIRCUITS"]
    if not isinstance(circuits, dict):
        errors.append(CHECKS["CIRCUITS_SHAPE"](
            path=_path("CIRCUITS"), expected="a dict of {name: {breaker settings}}",
            type=_type(circuits),
        ))
        return errors
    for name, overrides in circuits.items():
        overrides = {} if overrides is None else overrides
        if not isinstance(name, str) or not isinstance(overrides, dict):
            path, expected, found = (
                (_path("CIRCUITS", name), "a dict of breaker settings", _type(overrides))
                if isinstance(name, str)
                else (_path("CIRCUITS"), "keyed by strings", f"the {_type(name)} key {name!r}")
            )
            errors.append(CHECKS["CIRCUITS_SHAPE"](path=path, expected=expected, type=found))
            continue
        merged = conf.BREAKER_DEFAULTS | defaults | overrides
        for key, message, error in _breaker_errors(("CIRCUITS", name), merged):
            if (key, message) in default_problems and key not in overrides:
                continue  # inherited from CIRCUIT_DEFAULTS and reported there
            errors.append(error)
    return errors


def _store_class(store: str) -> tuple[type | None, str]:
    """The class a ``STORE`` dotted path names, or ``None`` and why not."""
    return _subclass_at(store, BaseStore)


def _subclass_at(path: str, base: type) -> tuple[type | None, str]:
    """The subclass of ``base`` that the dotted ``path`` names, or ``None`` and why not."""
    try:
        cls = import_string(path)
    except ImportError as err:
        return None, f"cannot import it: {err}"
    except Exception as err:  # noqa: BLE001  (importing user code may raise anything)
        return None, f"importing it raised {err!r}"
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return None, f"it is not a subclass of {base.__module__}.{base.__qualname__}"
    return cls, ""


@_check(Tags.caches)
def check_store(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    store = config["STORE"]
    if not isinstance(store, str):
        reason = f"it is a {_type(store)}"
    elif store == "auto" or store in conf.STORE_ALIASES:
        reason = ""
    else:
        reason = _store_class(store)[1]
    if reason:
        errors.append(CHECKS["STORE_INVALID"](path=_path("STORE"), value=store, reason=reason))

    alias = config["CACHE_ALIAS"]
    caches = django_settings.CACHES
    if not isinstance(alias, str) or alias not in caches:
        errors.append(CHECKS["CACHE_ALIAS_UNKNOWN"](
            path=_path("CACHE_ALIAS"), value=alias,
            hint=CHECKS["CACHE_ALIAS_UNKNOWN"].hint_for(valid=_names(caches)),
        ))
    elif store in ("redis", conf.STORE_ALIASES["redis"]) and not conf.cache_is_redis(alias):
        errors.append(CHECKS["STORE_REDIS_WITHOUT_REDIS_CACHE"](
            path=_path("STORE"), alias=alias, backend=conf.cache_backend(alias),
        ))

    database = config["DATABASE_ALIAS"]
    databases = django_settings.DATABASES
    if database is not None and (not isinstance(database, str) or database not in databases):
        errors.append(CHECKS["DATABASE_ALIAS_UNKNOWN"](
            path=_path("DATABASE_ALIAS"), value=database,
            hint=CHECKS["DATABASE_ALIAS_UNKNOWN"].hint_for(valid=_names(databases)),
        ))
    return errors


@_check()
def check_values(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    fail_open = config["FAIL_OPEN"]
    if not isinstance(fail_open, dict):
        errors.append(CHECKS["FAIL_OPEN_INVALID"](
            path=_path("FAIL_OPEN"), expected="a dict of {op_class: True or False}",
            value=fail_open,
        ))
    else:
        for op_class, value in fail_open.items():
            if op_class not in conf.OP_CLASSES:
                hint = _choice_hint(op_class, conf.OP_CLASSES, CHECKS["OP_CLASS_UNKNOWN"].hint,
                                    HINT_OP_CLASS_UNKNOWN_CLOSE)
                errors.append(CHECKS["OP_CLASS_UNKNOWN"](
                    path=_path("FAIL_OPEN"), op_class=op_class, hint=hint,
                ))
            elif not isinstance(value, bool):
                errors.append(CHECKS["FAIL_OPEN_INVALID"](
                    path=_path("FAIL_OPEN", op_class), expected="True or False", value=value,
                ))

    auth_failures = config["AUTH_FAILURES"]
    if auth_failures is not None:
        try:
            parse_rate(auth_failures)
        except (TypeError, ValueError) as err:
            errors.append(CHECKS["RATE_INVALID"](path=_path("AUTH_FAILURES"), error=err))

    proxies = config["TRUSTED_PROXIES"]
    if isinstance(proxies, bool) or not isinstance(proxies, int) or proxies < 0:
        errors.append(CHECKS["TRUSTED_PROXIES_INVALID"](
            path=_path("TRUSTED_PROXIES"), value=proxies,
        ))

    for key in DURATION_KEYS:
        value = config[key]
        if not _is_number(value) or value < 0:
            errors.append(CHECKS["DURATION_INVALID"](path=_path(key), value=value))
        elif key == "TIER_CACHE_TTL" and value > MAX_SNAPSHOT_TTL:
            errors.append(CHECKS["TIER_CACHE_TTL_SLOW"](path=_path(key), value=value))
        elif key == "SNAPSHOT_TTL" and value > MAX_SNAPSHOT_TTL:
            errors.append(CHECKS["SNAPSHOT_TTL_SLOW"](path=_path(key), value=value))

    token = config["MONITORING_TOKEN"]
    if token is not None and (not isinstance(token, str) or not token):
        errors.append(CHECKS["MONITORING_ACCESS_INVALID"](
            path=_path("MONITORING_TOKEN"), value=token,
        ))

    if not isinstance(config["SENTRY_ALERTS"], bool):
        errors.append(CHECKS["SENTRY_ALERTS_INVALID"](
            path=_path("SENTRY_ALERTS"), value=config["SENTRY_ALERTS"],
        ))
    errors += _alert_rule_errors(config["ALERT_RULES"])
    return errors


def _alert_rule_errors(table: Any) -> list[CheckMessage]:
    """``ALERT_RULES``: ``{rule: {setting: number above 0} or None}``."""
    check = CHECKS["ALERT_RULES_INVALID"]
    hint = check.hint_for(valid=_names(DEFAULT_RULES))
    if not isinstance(table, dict):
        return [check(path=_path("ALERT_RULES"), error=f"must be a dict, not {_type(table)}",
                      hint=hint)]
    errors: list[CheckMessage] = []
    for rule, values in table.items():
        if rule not in DEFAULT_RULES:
            errors.append(check(path=_path("ALERT_RULES", rule), error="is not an alert rule",
                                hint=hint))
        elif values is not None and values is not False:
            if not isinstance(values, dict):
                errors.append(check(path=_path("ALERT_RULES", rule),
                                    error=f"must be a dict or None, not {_type(values)}",
                                    hint=hint))
                continue
            for key, value in values.items():
                if key not in DEFAULT_RULES[rule]:
                    error = (f"is not a setting of this rule (it has "
                             f"{', '.join(DEFAULT_RULES[rule])})")
                elif not _is_number(value) or value <= 0:
                    error = f"must be a number above 0, not {value!r}"
                else:
                    continue
                errors.append(check(path=_path("ALERT_RULES", rule, key), error=error,
                                    hint=hint))
    return errors


@_check(Tags.caches)
def check_shared_state(config: dict[str, Any]) -> list[CheckMessage]:
    """Warn when live state would be per process outside development (``DEBUG = False``)."""
    if django_settings.DEBUG:
        return []
    warnings: list[CheckMessage] = []
    store = config["STORE"]
    if isinstance(store, str) and store != "auto":
        cls = _store_class(conf.STORE_ALIASES.get(store, store))[0]
        if store == "memory" or (cls is not None and not getattr(cls, "shared", True)):
            warnings.append(CHECKS["STORE_PER_PROCESS"](path=_path("STORE"), store=store))
    alias = config["CACHE_ALIAS"]
    if isinstance(alias, str) and alias in django_settings.CACHES:
        backend = conf.cache_backend(alias)
        if backend in PER_PROCESS_CACHES:
            warnings.append(CHECKS["CACHE_PER_PROCESS"](
                alias=alias, backend=backend, why=PER_PROCESS_CACHES[backend],
            ))
    return warnings


@_check(Tags.database)
def check_store_transaction(config: dict[str, Any]) -> list[CheckMessage]:
    """The database store must not share the transaction ``ATOMIC_REQUESTS`` wraps views in."""
    alias = config["DATABASE_ALIAS"] or "default"
    if not isinstance(alias, str) or not isinstance(config["STORE"], str):
        return []  # reported by check_values and check_store
    database = django_settings.DATABASES.get(alias)
    if not isinstance(database, dict) or not database.get("ATOMIC_REQUESTS"):
        return []
    if conf.settings.store_path() != conf.STORE_ALIASES["database"]:
        return []
    return [CHECKS["STORE_IN_REQUEST_TRANSACTION"](alias=alias)]


@_check(Tags.database, Tags.urls)
def check_views_in_request_transaction(config: dict[str, Any]) -> list[CheckMessage]:
    """Views that call ``protected`` must not run inside the request's transaction."""
    return [CHECKS["VIEW_IN_REQUEST_TRANSACTION"](route=route,
                                                  aliases=", ".join(map(repr, aliases)))
            for route, aliases in transactions.views_at_risk()]


@register(TAG, Tags.database)
def check_database_pool(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """PostgreSQL's ``OPTIONS["pool"]`` needs psycopg_pool, which Django imports only on the
    first connection; say so at start-up instead."""
    pooled = []
    for alias, database in django_settings.DATABASES.items():
        options = database.get("OPTIONS") if isinstance(database, dict) else None
        engine = str(database.get("ENGINE", "")) if isinstance(database, dict) else ""
        if isinstance(options, dict) and options.get("pool") and any(
                name in engine for name in POSTGRES_ENGINES):
            pooled.append(alias)
    if not pooled:
        return []
    try:
        importlib.import_module("psycopg_pool")
    except ImportError:
        return [CHECKS["POOL_WITHOUT_PSYCOPG_POOL"](alias=alias)
                for alias in pooled]
    return []


# Rate limiting ----------------------------------------------------------------------------


def _limiter_store_class(store: str) -> tuple[type | None, str]:
    """The class a ``RATELIMIT_STORE`` dotted path names, or ``None`` and why not."""
    return _subclass_at(store, BaseLimiterStore)


@_check(Tags.caches)
def check_ratelimit_store(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    store = config["RATELIMIT_STORE"]
    cls: type | None = None
    if not isinstance(store, str):
        reason = f"it is a {_type(store)}"
    elif store in ("auto", *RATELIMIT_STORES):
        reason = ""
    else:
        cls, reason = _limiter_store_class(store)
    if reason:
        return [CHECKS["RATELIMIT_STORE_INVALID"](
            path=_path("RATELIMIT_STORE"), value=store, reason=reason,
        )]
    alias = config["CACHE_ALIAS"]
    if not isinstance(alias, str) or alias not in django_settings.CACHES:
        return []  # E011
    redis_cache = conf.cache_is_redis(alias)
    if store == "redis" and not redis_cache:
        errors.append(CHECKS["RATELIMIT_STORE_REDIS_WITHOUT_REDIS_CACHE"](
            path=_path("RATELIMIT_STORE"), alias=alias, backend=conf.cache_backend(alias),
        ))
    per_process = (store == "memory" or (store == "auto" and not redis_cache)
                   or (cls is not None and not getattr(cls, "shared", True)))
    processes = config["EXPECTED_PROCESSES"]
    if per_process and isinstance(processes, int) and processes > 1:
        errors.append(CHECKS["RATELIMIT_STORE_PER_PROCESS"](
            store=store, path=_path("EXPECTED_PROCESSES"), processes=processes,
        ))
    if (cls is not None and config["AUTH_FAILURES"]
            and getattr(cls, "peek", None) is BaseLimiterStore.peek):
        errors.append(CHECKS["RATELIMIT_STORE_CANNOT_PEEK"](
            path=_path("RATELIMIT_STORE"), store=store,
        ))
    return errors


@_check()
def check_ratelimit_values(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    resolver = config["TIER_RESOLVER"]
    if resolver is not None:
        reason = ""
        if not isinstance(resolver, str):
            reason = f"it is a {_type(resolver)}"
        else:
            try:
                if not callable(import_string(resolver)):
                    reason = "it is not callable"
            except ImportError as err:
                reason = f"cannot import it: {err}"
            except Exception as err:  # noqa: BLE001  (importing user code may raise anything)
                reason = f"importing it raised {err!r}"
        if reason:
            errors.append(CHECKS["TIER_RESOLVER_INVALID"](
                path=_path("TIER_RESOLVER"), value=resolver, reason=reason,
            ))

    tiers = config["TIERS"] if isinstance(config["TIERS"], dict) else None
    for key in ("SHADOW_TIERS", "SHADOW_ENDPOINTS"):
        names = config[key]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            errors.append(CHECKS["SHADOW_INVALID"](path=_path(key), value=names))
        elif key == "SHADOW_TIERS" and tiers is not None:
            errors += [CHECKS["SHADOW_TIER_UNKNOWN"](
                path=_path(key), value=name,
                hint=CHECKS["SHADOW_TIER_UNKNOWN"].hint_for(valid=_names(tiers)),
            ) for name in names if name not in tiers]

    factor = config["ADAPTIVE_FACTOR"]
    if not _is_number(factor) or not 0 < factor <= 1:
        errors.append(CHECKS["ADAPTIVE_FACTOR_INVALID"](
            path=_path("ADAPTIVE_FACTOR"), value=factor,
        ))

    if not isinstance(config["EXEMPT_STAFF"], bool):
        errors.append(CHECKS["EXEMPTION_INVALID"](
            path=_path("EXEMPT_STAFF"), expected="True or False", value=config["EXEMPT_STAFF"],
        ))
    permission = config["EXEMPT_PERMISSION"]
    if permission is not None and (not isinstance(permission, str)
                                   or permission.count(".") != 1 or not all(
                                       permission.split("."))):
        errors.append(CHECKS["EXEMPTION_INVALID"](
            path=_path("EXEMPT_PERMISSION"), expected='None or "app_label.codename"',
            value=permission,
        ))

    processes = config["EXPECTED_PROCESSES"]
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        errors.append(CHECKS["EXPECTED_PROCESSES_INVALID"](
            path=_path("EXPECTED_PROCESSES"), value=processes,
        ))

    global_limits = {} if config["GLOBAL_LIMITS"] is None else config["GLOBAL_LIMITS"]
    if not isinstance(global_limits, dict):
        errors.append(CHECKS["LIMITS_SHAPE"](
            path=_path("GLOBAL_LIMITS"), expected="a dict of {op_class: rate or [rates]}",
            type=_type(global_limits), hint=HINT_GLOBAL_LIMITS_SHAPE,
        ))
    else:
        errors += _limits_errors(("GLOBAL_LIMITS",), global_limits)
    return errors


@_check(Tags.database)
def check_database_alias(config: dict[str, Any]) -> list[CheckMessage]:
    """``DATABASE_ALIAS`` works as a second alias of the default database, through the
    router (docs/settings.md, "The app's database alias")."""
    alias = config["DATABASE_ALIAS"]
    if not isinstance(alias, str) or alias == DEFAULT_DB_ALIAS or (
            alias not in django_settings.DATABASES):
        return []  # None, the default itself, or reported by check_values
    path = _path("DATABASE_ALIAS")
    messages: list[CheckMessage] = []
    if not any(_is_resilience_router(entry) for entry in django_settings.DATABASE_ROUTERS):
        messages.append(CHECKS["DATABASE_ALIAS_WITHOUT_ROUTER"](path=path, alias=alias))
    if not same_database(alias, DEFAULT_DB_ALIAS):
        check = CHECKS["DATABASE_ALIAS_OTHER_DATABASE"]
        messages.append(check(path=path, alias=alias, hint=check.hint_for(alias=alias)))
    return messages


def _is_resilience_router(entry: Any) -> bool:
    if isinstance(entry, str):
        try:
            entry = import_string(entry)
        except ImportError:
            return False
    router_class = entry if isinstance(entry, type) else type(entry)
    return issubclass(router_class, ResilienceRouter)


@register(TAG, Tags.caches, deploy=True)
def check_write_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: where writes go while the database is down, and whether Redis
    keeps them (persistence, eviction)."""
    config = _config()
    if config is None or not isinstance(config["CACHE_ALIAS"], str):
        return []
    alias = config["CACHE_ALIAS"]
    if alias not in django_settings.CACHES:
        return []  # reported by check_values
    if not conf.cache_is_redis(alias):
        return [CHECKS["QUEUE_WITHOUT_REDIS"](alias=alias)]
    found = [CHECKS[key](problem=problem) for key, problem in (
        ("QUEUE_NOT_PERSISTENT", probe.persistence_problem()),
        ("QUEUE_EVICTABLE", probe.eviction_problem())) if problem is not None]
    return found


@register(TAG, Tags.caches, Tags.security, deploy=True)
def check_cache_serializer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: a Redis cache that pickles runs code whoever writes to it chose."""
    config = _config()
    if config is None or not isinstance(config["CACHE_ALIAS"], str):
        return []
    alias = config["CACHE_ALIAS"]
    if alias not in django_settings.CACHES or not conf.cache_is_redis(alias):
        return []
    options = django_settings.CACHES[alias].get("OPTIONS")
    serializer = options.get("SERIALIZER") if isinstance(options, dict) else None
    if (serializer or PICKLE_SERIALIZER) != PICKLE_SERIALIZER:
        return []
    return [CHECKS["CACHE_PICKLES"](alias=alias)]


@_check(Tags.database)
def check_pool_timeout(config: dict[str, Any]) -> list[CheckMessage]:
    """A request must not wait longer for a pooled connection than its call's budget."""
    budgets = {}
    circuits = config["CIRCUITS"] if isinstance(config["CIRCUITS"], dict) else {}
    for name in (*conf.DEFAULT_CIRCUITS, *circuits):
        merged = conf.BREAKER_DEFAULTS.copy()
        for layer in (config["CIRCUIT_DEFAULTS"], circuits.get(name)):
            if isinstance(layer, dict):
                merged.update(layer)
        if _is_number(merged["call_timeout"]):
            budgets[name] = merged["call_timeout"]
    if not budgets:
        return []  # reported by check_circuits
    circuit = min(budgets, key=budgets.__getitem__)
    warnings: list[CheckMessage] = []
    for alias, database in django_settings.DATABASES.items():
        options = database.get("OPTIONS") if isinstance(database, dict) else None
        engine = str(database.get("ENGINE", "")) if isinstance(database, dict) else ""
        pool = options.get("pool") if isinstance(options, dict) else None
        if not pool or not any(name in engine for name in POSTGRES_ENGINES):
            continue
        timeout = pool.get("timeout", deadlines.PSYCOPG_POOL_DEFAULT_TIMEOUT) if isinstance(
            pool, dict) else deadlines.PSYCOPG_POOL_DEFAULT_TIMEOUT
        if _is_number(timeout) and timeout >= budgets[circuit]:
            warnings.append(CHECKS["POOL_WAIT_OVER_BUDGET"](
                alias=alias, timeout=timeout, budget=budgets[circuit], circuit=circuit))
    return warnings
