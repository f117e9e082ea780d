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
from dataclasses import fields
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from resilience_crm import conf, core, queue
from resilience_crm.rates import parse_rates

TAG = "resilience_crm"
SETTING = conf.SETTING_NAME

#: Breaker setting names a circuit may configure.
BREAKER_KEYS = tuple(f.name for f in fields(core.Config))
#: Settings that take a number of seconds (or days) and must not be negative.
DURATION_KEYS = (
    "FALLBACK_TTL", "FALLBACK_STALE_TTL", "METRICS_RETENTION_DAYS", "SNAPSHOT_TTL",
    "STORE_RETRY_INTERVAL",
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


class Codes:
    SETTING_NOT_DICT = "resilience_crm.E001"
    UNKNOWN_KEY = "resilience_crm.E002"
    LIMITS_SHAPE = "resilience_crm.E003"
    RATE_INVALID = "resilience_crm.E004"
    OP_CLASS_UNKNOWN = "resilience_crm.E005"
    TIER_UNKNOWN = "resilience_crm.E006"
    CIRCUITS_SHAPE = "resilience_crm.E007"
    BREAKER_INVALID = "resilience_crm.E008"
    STORE_INVALID = "resilience_crm.E009"
    STORE_REDIS_WITHOUT_REDIS_CACHE = "resilience_crm.E010"
    CACHE_ALIAS_UNKNOWN = "resilience_crm.E011"
    DATABASE_ALIAS_UNKNOWN = "resilience_crm.E012"
    FAIL_OPEN_INVALID = "resilience_crm.E013"
    TRUSTED_PROXIES_INVALID = "resilience_crm.E014"
    DURATION_INVALID = "resilience_crm.E015"
    SENTRY_ALERTS_INVALID = "resilience_crm.E016"
    POOL_WITHOUT_PSYCOPG_POOL = "resilience_crm.E017"
    CHECK_FAILED = "resilience_crm.E099"
    SNAPSHOT_TTL_SLOW = "resilience_crm.W001"
    STORE_PER_PROCESS = "resilience_crm.W002"
    CACHE_PER_PROCESS = "resilience_crm.W003"
    STORE_IN_REQUEST_TRANSACTION = "resilience_crm.W004"
    QUEUE_WITHOUT_REDIS = "resilience_crm.W010"
    QUEUE_NOT_PERSISTENT = "resilience_crm.W011"
    POOL_WAIT_OVER_BUDGET = "resilience_crm.W012"


class Messages:
    SETTING_NOT_DICT = "settings.RESILIENCE_CRM must be a dict, not {type}."
    UNKNOWN_KEY = "{path} is not a resilience_crm setting."
    LIMITS_SHAPE = "{path} must be {expected}, not {type}."
    RATE_INVALID = "{path} is not a valid rate: {error}."
    OP_CLASS_UNKNOWN = "{path}: {op_class!r} is not an operation class."
    TIER_UNKNOWN = (
        "{path} is {value!r}, which is not one of the tiers in RESILIENCE_CRM[\"TIERS\"]."
    )
    CIRCUITS_SHAPE = "{path} must be {expected}, not {type}."
    BREAKER_INVALID = "{path} {error}."
    STORE_INVALID = (
        "{path} is {value!r}, which is neither a store name nor a dotted path to a store class"
        " ({reason})."
    )
    STORE_REDIS_WITHOUT_REDIS_CACHE = (
        "{path} selects the Redis store but the cache {alias!r} that"
        " RESILIENCE_CRM[\"CACHE_ALIAS\"] names uses {backend!r}, not django-redis."
    )
    CACHE_ALIAS_UNKNOWN = "{path} is {value!r}, which is not a cache in settings.CACHES."
    DATABASE_ALIAS_UNKNOWN = "{path} is {value!r}, which is not a database in settings.DATABASES."
    FAIL_OPEN_INVALID = "{path} must be {expected}, not {value!r}."
    TRUSTED_PROXIES_INVALID = "{path} must be a whole number of at least 0, not {value!r}."
    DURATION_INVALID = "{path} must be a number of at least 0, not {value!r}."
    SENTRY_ALERTS_INVALID = "{path} must be True or False, not {value!r}."
    POOL_WITHOUT_PSYCOPG_POOL = (
        "settings.DATABASES[\"{alias}\"][\"OPTIONS\"][\"pool\"] is set but psycopg_pool cannot"
        " be imported."
    )
    CHECK_FAILED = "{check} could not check settings.RESILIENCE_CRM: {error!r}."
    SNAPSHOT_TTL_SLOW = (
        "{path} is {value!r}: a forced state or reset made in the admin takes up to that many"
        " seconds to reach every worker, longer than the one second the app promises."
    )
    STORE_PER_PROCESS = (
        "{path} selects {store!r}, which keeps circuit state inside each process: with more than"
        " one worker, each opens and closes its circuits on its own."
    )
    CACHE_PER_PROCESS = (
        "The cache {alias!r} that RESILIENCE_CRM[\"CACHE_ALIAS\"] names uses {backend!r}, which"
        " {why}: with more than one worker, rate limits and fallback data are not shared."
    )
    STORE_IN_REQUEST_TRANSACTION = (
        "The database store keeps live circuit state on the database {alias!r}, which has"
        " ATOMIC_REQUESTS: a request that fails rolls back the state change its failure made."
    )
    QUEUE_WITHOUT_REDIS = (
        "The cache {alias!r} that RESILIENCE_CRM[\"CACHE_ALIAS\"] names is not Redis, so the"
        " write queue has nowhere outside the database to keep writes: while the database is"
        " down, protected.submit() refuses them with 503 QUEUE_UNAVAILABLE."
    )
    QUEUE_NOT_PERSISTENT = (
        "{problem}: writes queued during a database outage are lost if Redis restarts before"
        " they are replayed."
    )
    POOL_WAIT_OVER_BUDGET = (
        "settings.DATABASES[\"{alias}\"][\"OPTIONS\"][\"pool\"] waits up to {timeout}s for a"
        " connection, not less than the {budget}s call_timeout of circuit {circuit!r}: on a"
        " stalled database a request waits past its deadline."
    )


class Hints:
    SETTING_NOT_DICT = "Set RESILIENCE_CRM = {...} with the keys described in docs/settings.md."
    UNKNOWN_KEY = "Valid keys: {valid}."
    UNKNOWN_KEY_CLOSE = "Did you mean {close!r}? Valid keys: {valid}."
    TIERS_SHAPE = 'Example: {"free": {"read": "120/min", "write": ["5/s", "30/min"]}}.'
    ENDPOINTS_SHAPE = 'Example: {"contact-list": {"read": "10/s"}}, keyed by URL name.'
    RATE_INVALID = 'Write a rate as "<requests>/<period>": "100/min", "10/5s", "1000/hour".'
    OP_CLASS_UNKNOWN = "Operation classes: {valid}."
    OP_CLASS_UNKNOWN_CLOSE = "Did you mean {close!r}? Operation classes: {valid}."
    TIER_UNKNOWN = "Tiers: {valid}."
    CIRCUITS_SHAPE = 'Example: {"crm.read": {"failure_threshold": 10, "reset_timeout": 60}}.'
    BREAKER_INVALID = "See 'Breaker settings' in docs/settings.md for each setting's range."
    BREAKER_UNKNOWN = "Breaker settings: {valid}."
    BREAKER_UNKNOWN_CLOSE = "Did you mean {close!r}? Breaker settings: {valid}."
    STORE_INVALID = (
        'Use "auto", "redis", "database", "memory", or the dotted path of a subclass of'
        " resilience_crm.stores.base.BaseStore."
    )
    STORE_REDIS_WITHOUT_REDIS_CACHE = (
        'Point CACHE_ALIAS at a cache with BACKEND "django_redis.cache.RedisCache", or use'
        ' STORE "auto" to pick the database store when there is no Redis.'
    )
    CACHE_ALIAS_UNKNOWN = "Caches: {valid}."
    DATABASE_ALIAS_UNKNOWN = "Use None for the default database, or one of: {valid}."
    FAIL_OPEN_INVALID = 'Example: {"read": True, "write": True, "rpc": True, "auth": False}.'
    TRUSTED_PROXIES_INVALID = (
        "Count the proxies in front of the app that append to X-Forwarded-For; 0 trusts none."
    )
    DURATION_INVALID = "Use 0 to turn it off, where that is meaningful."
    SENTRY_ALERTS_INVALID = None
    POOL_WITHOUT_PSYCOPG_POOL = 'Install psycopg with the pool extra: pip install "psycopg[pool]".'
    CHECK_FAILED = "This is a bug in resilience_crm; please report it with your settings."
    SNAPSHOT_TTL_SLOW = f"Use a value of at most {MAX_SNAPSHOT_TTL}; 0.5 is the default."
    STORE_PER_PROCESS = (
        'Use "auto", "redis" or "database" when the app runs in more than one process. Silence'
        " this warning if it never does."
    )
    CACHE_PER_PROCESS = (
        "Point RESILIENCE_CRM[\"CACHE_ALIAS\"] at a Redis cache (django-redis) when the app runs"
        " in more than one process. Silence this warning if it never does."
    )
    QUEUE_WITHOUT_REDIS = (
        "Point RESILIENCE_CRM[\"CACHE_ALIAS\"] at a django-redis cache to queue writes during"
        " outages, or silence this warning if refusing them is what you want."
    )
    QUEUE_NOT_PERSISTENT = (
        "Turn on appendonly (appendfsync everysec) or RDB snapshots in redis.conf."
    )
    POOL_WAIT_OVER_BUDGET = (
        'Set "timeout" in the pool options below the shortest call_timeout, e.g.'
        ' {"pool": {"timeout": 1.0}}; psycopg_pool waits 30 s by default.'
    )
    STORE_IN_REQUEST_TRANSACTION = (
        "Add a second alias for the same database without ATOMIC_REQUESTS, name it in"
        " RESILIENCE_CRM[\"DATABASE_ALIAS\"] and add resilience_crm.routers.ResilienceRouter to"
        " DATABASE_ROUTERS, or use the Redis store."
    )


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


def _choice_hint(word: Any, choices: Iterable[str], plain: str, close: str) -> str:
    choices = list(choices)
    match = _closest(word, choices)
    valid = _names(choices)
    return close.format(close=match, valid=valid) if match else plain.format(valid=valid)


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
                return [Error(Messages.CHECK_FAILED.format(check=func.__name__, error=err),
                              hint=Hints.CHECK_FAILED, id=Codes.CHECK_FAILED)]

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
    return [Error(Messages.SETTING_NOT_DICT.format(type=_type(value)),
                  hint=Hints.SETTING_NOT_DICT, id=Codes.SETTING_NOT_DICT)]


@_check()
def check_unknown_keys(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in config:
        if key not in conf.DEFAULTS:
            hint = _choice_hint(key, conf.DEFAULTS, Hints.UNKNOWN_KEY, Hints.UNKNOWN_KEY_CLOSE)
            errors.append(Error(Messages.UNKNOWN_KEY.format(path=_path(key)), hint=hint,
                                id=Codes.UNKNOWN_KEY))
    return errors


def _limits_errors(path: tuple[Any, ...], limits: Mapping[Any, Any]) -> list[CheckMessage]:
    """Errors in one ``{op_class: rate or [rates]}`` mapping at ``path``."""
    errors: list[CheckMessage] = []
    for op_class, rates in limits.items():
        if op_class not in conf.OP_CLASSES:
            hint = _choice_hint(op_class, conf.OP_CLASSES, Hints.OP_CLASS_UNKNOWN,
                                Hints.OP_CLASS_UNKNOWN_CLOSE)
            errors.append(Error(
                Messages.OP_CLASS_UNKNOWN.format(path=_path(*path), op_class=op_class),
                hint=hint, id=Codes.OP_CLASS_UNKNOWN,
            ))
            continue
        try:
            parse_rates(rates)
        except (TypeError, ValueError) as err:
            errors.append(Error(
                Messages.RATE_INVALID.format(path=_path(*path, op_class), error=err),
                hint=Hints.RATE_INVALID, id=Codes.RATE_INVALID,
            ))
    return errors


def _table_errors(key: str, table: Any, expected: str, hint: str) -> list[CheckMessage]:
    """Errors in ``TIERS`` or ``ENDPOINTS``: ``{name: {op_class: rate or [rates]}}``."""
    if not isinstance(table, dict):
        return [Error(Messages.LIMITS_SHAPE.format(path=_path(key), expected=expected,
                                                   type=_type(table)),
                      hint=hint, id=Codes.LIMITS_SHAPE)]
    errors: list[CheckMessage] = []
    for name, limits in table.items():
        if not isinstance(name, str):
            errors.append(Error(
                Messages.LIMITS_SHAPE.format(path=_path(key), expected="keyed by strings",
                                             type=f"the {_type(name)} key {name!r}"),
                hint=hint, id=Codes.LIMITS_SHAPE,
            ))
        elif not isinstance(limits, dict):
            errors.append(Error(
                Messages.LIMITS_SHAPE.format(path=_path(key, name),
                                             expected="a dict of {op_class: rate or [rates]}",
                                             type=_type(limits)),
                hint=hint, id=Codes.LIMITS_SHAPE,
            ))
        else:
            errors += _limits_errors((key, name), limits)
    return errors


@_check()
def check_rate_limits(config: dict[str, Any]) -> list[CheckMessage]:
    tiers = config["TIERS"]
    errors = _table_errors("TIERS", tiers, "a dict of {tier: {op_class: rate or [rates]}}",
                           Hints.TIERS_SHAPE)
    endpoints = {} if config["ENDPOINTS"] is None else config["ENDPOINTS"]
    errors += _table_errors("ENDPOINTS", endpoints,
                            "a dict of {url_name: {op_class: rate or [rates]}}",
                            Hints.ENDPOINTS_SHAPE)
    if isinstance(tiers, dict):
        names = [name for name in tiers if isinstance(name, str)]
        for key in ("DEFAULT_TIER", "ANONYMOUS_TIER"):
            value = config[key]
            if not isinstance(value, str) or value not in tiers:
                errors.append(Error(
                    Messages.TIER_UNKNOWN.format(path=_path(key), value=value),
                    hint=Hints.TIER_UNKNOWN.format(valid=_names(names)), id=Codes.TIER_UNKNOWN,
                ))
    return errors


def _breaker_errors(path: tuple[Any, ...],
                    merged: dict[str, Any]) -> list[tuple[str, str, Error]]:
    """``(key, message, error)`` for each problem in one circuit's merged breaker settings."""
    problems = core.config_errors(merged)
    found = []
    for key, message in problems:
        if message == "is not a breaker setting":
            hint = _choice_hint(key, BREAKER_KEYS, Hints.BREAKER_UNKNOWN,
                                Hints.BREAKER_UNKNOWN_CLOSE)
        else:
            hint = Hints.BREAKER_INVALID
            other = message.rsplit(" ", 1)[-1]
            if other != key and other in merged and key in merged:  # a rule between two keys
                message += f" ({key} is {merged[key]!r}, {other} is {merged[other]!r})"
        error = Error(Messages.BREAKER_INVALID.format(path=_path(*path, key), error=message),
                      hint=hint, id=Codes.BREAKER_INVALID)
        found.append((key, message, error))
    return found


@_check()
def check_circuits(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    defaults = {} if config["CIRCUIT_DEFAULTS"] is None else config["CIRCUIT_DEFAULTS"]
    default_problems: set[tuple[str, str]] = set()
    if not isinstance(defaults, dict):
        errors.append(Error(
            Messages.CIRCUITS_SHAPE.format(path=_path("CIRCUIT_DEFAULTS"),
                                           expected="a dict of breaker settings",
                                           type=_type(defaults)),
            hint=Hints.BREAKER_INVALID, id=Codes.CIRCUITS_SHAPE,
        ))
        defaults = {}
    else:
        for key, message, error in _breaker_errors(("CIRCUIT_DEFAULTS",),
                                                   conf.BREAKER_DEFAULTS | defaults):
            default_problems.add((key, message))
            errors.append(error)

    circuits = {} if config["CIRCUITS"] is None else config["CIRCUITS"]
    if not isinstance(circuits, dict):
        errors.append(Error(
            Messages.CIRCUITS_SHAPE.format(path=_path("CIRCUITS"),
                                           expected="a dict of {name: {breaker settings}}",
                                           type=_type(circuits)),
            hint=Hints.CIRCUITS_SHAPE, id=Codes.CIRCUITS_SHAPE,
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
            errors.append(Error(
                Messages.CIRCUITS_SHAPE.format(path=path, expected=expected, type=found),
                hint=Hints.CIRCUITS_SHAPE, id=Codes.CIRCUITS_SHAPE,
            ))
            continue
        merged = conf.BREAKER_DEFAULTS | defaults | overrides
        for key, message, error in _breaker_errors(("CIRCUITS", name), merged):
            if (key, message) in default_problems and key not in overrides:
                continue  # inherited from CIRCUIT_DEFAULTS and reported there
            errors.append(error)
    return errors


def _store_class(store: str) -> tuple[type | None, str]:
    """The class a ``STORE`` dotted path names, or ``None`` and why not."""
    from resilience_crm.stores.base import BaseStore

    try:
        cls = import_string(store)
    except ImportError as err:
        return None, f"cannot import it: {err}"
    except Exception as err:  # noqa: BLE001  (importing user code may raise anything)
        return None, f"importing it raised {err!r}"
    if not (isinstance(cls, type) and issubclass(cls, BaseStore)):
        return None, "it is not a subclass of resilience_crm.stores.base.BaseStore"
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
        errors.append(Error(Messages.STORE_INVALID.format(path=_path("STORE"), value=store,
                                                          reason=reason),
                            hint=Hints.STORE_INVALID, id=Codes.STORE_INVALID))

    alias = config["CACHE_ALIAS"]
    caches = django_settings.CACHES
    if not isinstance(alias, str) or alias not in caches:
        errors.append(Error(
            Messages.CACHE_ALIAS_UNKNOWN.format(path=_path("CACHE_ALIAS"), value=alias),
            hint=Hints.CACHE_ALIAS_UNKNOWN.format(valid=_names(caches)),
            id=Codes.CACHE_ALIAS_UNKNOWN,
        ))
    elif store in ("redis", conf.STORE_ALIASES["redis"]) and not conf.cache_is_redis(alias):
        errors.append(Error(
            Messages.STORE_REDIS_WITHOUT_REDIS_CACHE.format(
                path=_path("STORE"), alias=alias, backend=conf.cache_backend(alias)),
            hint=Hints.STORE_REDIS_WITHOUT_REDIS_CACHE, id=Codes.STORE_REDIS_WITHOUT_REDIS_CACHE,
        ))

    database = config["DATABASE_ALIAS"]
    databases = django_settings.DATABASES
    if database is not None and (not isinstance(database, str) or database not in databases):
        errors.append(Error(
            Messages.DATABASE_ALIAS_UNKNOWN.format(path=_path("DATABASE_ALIAS"), value=database),
            hint=Hints.DATABASE_ALIAS_UNKNOWN.format(valid=_names(databases)),
            id=Codes.DATABASE_ALIAS_UNKNOWN,
        ))
    return errors


@_check()
def check_values(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    fail_open = config["FAIL_OPEN"]
    if not isinstance(fail_open, dict):
        errors.append(Error(
            Messages.FAIL_OPEN_INVALID.format(path=_path("FAIL_OPEN"),
                                              expected="a dict of {op_class: True or False}",
                                              value=fail_open),
            hint=Hints.FAIL_OPEN_INVALID, id=Codes.FAIL_OPEN_INVALID,
        ))
    else:
        for op_class, value in fail_open.items():
            if op_class not in conf.OP_CLASSES:
                hint = _choice_hint(op_class, conf.OP_CLASSES, Hints.OP_CLASS_UNKNOWN,
                                    Hints.OP_CLASS_UNKNOWN_CLOSE)
                errors.append(Error(
                    Messages.OP_CLASS_UNKNOWN.format(path=_path("FAIL_OPEN"), op_class=op_class),
                    hint=hint, id=Codes.OP_CLASS_UNKNOWN,
                ))
            elif not isinstance(value, bool):
                errors.append(Error(
                    Messages.FAIL_OPEN_INVALID.format(path=_path("FAIL_OPEN", op_class),
                                                      expected="True or False", value=value),
                    hint=Hints.FAIL_OPEN_INVALID, id=Codes.FAIL_OPEN_INVALID,
                ))

    proxies = config["TRUSTED_PROXIES"]
    if isinstance(proxies, bool) or not isinstance(proxies, int) or proxies < 0:
        errors.append(Error(
            Messages.TRUSTED_PROXIES_INVALID.format(path=_path("TRUSTED_PROXIES"), value=proxies),
            hint=Hints.TRUSTED_PROXIES_INVALID, id=Codes.TRUSTED_PROXIES_INVALID,
        ))

    for key in DURATION_KEYS:
        value = config[key]
        if not _is_number(value) or value < 0:
            errors.append(Error(Messages.DURATION_INVALID.format(path=_path(key), value=value),
                                hint=Hints.DURATION_INVALID, id=Codes.DURATION_INVALID))
        elif key == "SNAPSHOT_TTL" and value > MAX_SNAPSHOT_TTL:
            errors.append(CheckWarning(
                Messages.SNAPSHOT_TTL_SLOW.format(path=_path(key), value=value),
                hint=Hints.SNAPSHOT_TTL_SLOW, id=Codes.SNAPSHOT_TTL_SLOW,
            ))

    if not isinstance(config["SENTRY_ALERTS"], bool):
        errors.append(Error(
            Messages.SENTRY_ALERTS_INVALID.format(path=_path("SENTRY_ALERTS"),
                                                  value=config["SENTRY_ALERTS"]),
            hint=Hints.SENTRY_ALERTS_INVALID, id=Codes.SENTRY_ALERTS_INVALID,
        ))
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
            warnings.append(CheckWarning(
                Messages.STORE_PER_PROCESS.format(path=_path("STORE"), store=store),
                hint=Hints.STORE_PER_PROCESS, id=Codes.STORE_PER_PROCESS,
            ))
    alias = config["CACHE_ALIAS"]
    if isinstance(alias, str) and alias in django_settings.CACHES:
        backend = conf.cache_backend(alias)
        if backend in PER_PROCESS_CACHES:
            warnings.append(CheckWarning(
                Messages.CACHE_PER_PROCESS.format(alias=alias, backend=backend,
                                                  why=PER_PROCESS_CACHES[backend]),
                hint=Hints.CACHE_PER_PROCESS, id=Codes.CACHE_PER_PROCESS,
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
    return [CheckWarning(Messages.STORE_IN_REQUEST_TRANSACTION.format(alias=alias),
                         hint=Hints.STORE_IN_REQUEST_TRANSACTION,
                         id=Codes.STORE_IN_REQUEST_TRANSACTION)]


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
        return [Error(Messages.POOL_WITHOUT_PSYCOPG_POOL.format(alias=alias),
                      hint=Hints.POOL_WITHOUT_PSYCOPG_POOL, id=Codes.POOL_WITHOUT_PSYCOPG_POOL)
                for alias in pooled]
    return []


@register(TAG, Tags.caches, deploy=True)
def check_write_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: where writes go while the database is down."""
    config = _config()
    if config is None or not isinstance(config["CACHE_ALIAS"], str):
        return []
    alias = config["CACHE_ALIAS"]
    if alias not in django_settings.CACHES:
        return []  # reported by check_values
    if not conf.cache_is_redis(alias):
        return [CheckWarning(Messages.QUEUE_WITHOUT_REDIS.format(alias=alias),
                             hint=Hints.QUEUE_WITHOUT_REDIS, id=Codes.QUEUE_WITHOUT_REDIS)]
    problem = queue.persistence_problem()
    if problem is None:
        return []
    return [CheckWarning(Messages.QUEUE_NOT_PERSISTENT.format(problem=problem),
                         hint=Hints.QUEUE_NOT_PERSISTENT, id=Codes.QUEUE_NOT_PERSISTENT)]


#: psycopg_pool's wait for a connection when the pool options name no ``timeout``.
PSYCOPG_POOL_DEFAULT_TIMEOUT = 30.0


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
        timeout = pool.get("timeout", PSYCOPG_POOL_DEFAULT_TIMEOUT) if isinstance(
            pool, dict) else PSYCOPG_POOL_DEFAULT_TIMEOUT
        if _is_number(timeout) and timeout >= budgets[circuit]:
            warnings.append(CheckWarning(
                Messages.POOL_WAIT_OVER_BUDGET.format(alias=alias, timeout=timeout,
                                                      budget=budgets[circuit], circuit=circuit),
                hint=Hints.POOL_WAIT_OVER_BUDGET, id=Codes.POOL_WAIT_OVER_BUDGET))
    return warnings
