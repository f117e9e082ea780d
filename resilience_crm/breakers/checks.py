"""System checks on the breakers' settings: ``CIRCUIT_DEFAULTS`` and ``CIRCUITS`` (validated
by the breaker's own :func:`~resilience_crm.breakers.config.breaker_errors` on the settings
``conf`` merges for each circuit), ``STORE``, and ``SNAPSHOT_TTL``'s one-second promise."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags

from resilience_crm import conf
from resilience_crm.breakers.config import breaker_errors
from resilience_crm.breakers.stores.base import BaseStore
from resilience_crm.checks import (
    CHECKS,
    MAX_SNAPSHOT_TTL,
    Check,
    choice_hint,
    is_number,
    setting_path,
    settings_check,
    subclass_at,
    table,
    type_name,
)

#: Breaker setting names a circuit may configure.
BREAKER_KEYS = tuple(conf.BREAKER_DEFAULTS)

MESSAGES = table({
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
})

HINT_BREAKER_UNKNOWN = "Breaker settings: {valid}."
HINT_BREAKER_UNKNOWN_CLOSE = "Did you mean {close!r}? Breaker settings: {valid}."


def _breaker_errors(path: tuple[Any, ...],
                    merged: dict[str, Any]) -> list[tuple[str, str, CheckMessage]]:
    """``(key, message, error)`` for each problem in one circuit's merged breaker settings."""
    found = []
    for key, message in breaker_errors(merged):
        hint: str | None
        if message == "is not a breaker setting":
            hint = choice_hint(key, BREAKER_KEYS, HINT_BREAKER_UNKNOWN,
                               HINT_BREAKER_UNKNOWN_CLOSE)
        else:
            hint = CHECKS["BREAKER_INVALID"].hint
            other = message.rsplit(" ", 1)[-1]
            if other != key and other in merged and key in merged:  # a rule between two keys
                message += f" ({key} is {merged[key]!r}, {other} is {merged[other]!r})"
        error = CHECKS["BREAKER_INVALID"](path=setting_path(*path, key), error=message,
                                          hint=hint)
        found.append((key, message, error))
    return found


@settings_check()
def check_circuits(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    defaults = {} if config["CIRCUIT_DEFAULTS"] is None else config["CIRCUIT_DEFAULTS"]
    default_problems: set[tuple[str, str]] = set()
    if not isinstance(defaults, dict):
        errors.append(CHECKS["CIRCUITS_SHAPE"](
            path=setting_path("CIRCUIT_DEFAULTS"), expected="a dict of breaker settings",
            type=type_name(defaults), hint=CHECKS["BREAKER_INVALID"].hint,
        ))
    else:
        for key, message, error in _breaker_errors(("CIRCUIT_DEFAULTS",),
                                                   conf.settings.circuit_defaults()):
            default_problems.add((key, message))
            errors.append(error)

    circuits = {} if config["CIRCUITS"] is None else config["CIRCUITS"]
    if not isinstance(circuits, dict):
        errors.append(CHECKS["CIRCUITS_SHAPE"](
            path=setting_path("CIRCUITS"), expected="a dict of {name: {breaker settings}}",
            type=type_name(circuits),
        ))
        return errors
    for name, overrides in circuits.items():
        overrides = {} if overrides is None else overrides
        if not isinstance(name, str) or not isinstance(overrides, dict):
            path, expected, found = (
                (setting_path("CIRCUITS", name), "a dict of breaker settings",
                 type_name(overrides))
                if isinstance(name, str)
                else (setting_path("CIRCUITS"), "keyed by strings",
                      f"the {type_name(name)} key {name!r}")
            )
            errors.append(CHECKS["CIRCUITS_SHAPE"](path=path, expected=expected, type=found))
            continue
        merged = conf.settings.circuit_config(name)
        for key, message, error in _breaker_errors(("CIRCUITS", name), merged):
            if (key, message) in default_problems and key not in overrides:
                continue  # inherited from CIRCUIT_DEFAULTS and reported there
            errors.append(error)
    return errors


def _store_class(store: Any) -> tuple[type | None, str]:
    """The class ``STORE`` names, as ``conf`` resolves it, or ``None`` and why not; ``None``
    and no reason for "auto" (a built-in store, whichever the cache decides)."""
    if not isinstance(store, str):
        return None, f"it is a {type_name(store)}"
    if store == "auto":
        return None, ""
    return subclass_at(conf.settings.store_path(), BaseStore)


@settings_check(Tags.caches)
def check_store(config: dict[str, Any]) -> list[CheckMessage]:
    store = config["STORE"]
    reason = _store_class(store)[1]
    if reason:
        return [CHECKS["STORE_INVALID"](path=setting_path("STORE"), value=store, reason=reason)]
    alias = config["CACHE_ALIAS"]
    if (isinstance(alias, str) and alias in django_settings.CACHES
            and conf.settings.store_path() == conf.STORE_ALIASES["redis"]
            and not conf.cache_is_redis(alias)):
        return [CHECKS["STORE_REDIS_WITHOUT_REDIS_CACHE"](
            path=setting_path("STORE"), alias=alias, backend=conf.cache_backend(alias),
        )]
    return []


@settings_check(Tags.caches)
def check_store_shared(config: dict[str, Any]) -> list[CheckMessage]:
    """Warn when circuit state would be per process outside development (``DEBUG = False``)."""
    store = config["STORE"]
    if django_settings.DEBUG:
        return []
    cls = _store_class(store)[0]
    if cls is None or getattr(cls, "shared", True):
        return []
    return [CHECKS["STORE_PER_PROCESS"](path=setting_path("STORE"), store=store)]


@settings_check(Tags.database)
def check_store_transaction(config: dict[str, Any]) -> list[CheckMessage]:
    """The database store must not share the transaction ``ATOMIC_REQUESTS`` wraps views in."""
    alias = config["DATABASE_ALIAS"] or "default"
    if not isinstance(alias, str) or not isinstance(config["STORE"], str):
        return []  # reported by check_database_alias_exists and check_store
    database = django_settings.DATABASES.get(alias)
    if not isinstance(database, dict) or not database.get("ATOMIC_REQUESTS"):
        return []
    if conf.settings.store_path() != conf.STORE_ALIASES["database"]:
        return []
    return [CHECKS["STORE_IN_REQUEST_TRANSACTION"](alias=alias)]


@settings_check()
def check_snapshot_ttl(config: dict[str, Any]) -> list[CheckMessage]:
    """A worker's view of a circuit must not outlive the one-second promise (a value that is
    not a duration at all is E015)."""
    value = config["SNAPSHOT_TTL"]
    if not is_number(value) or value <= MAX_SNAPSHOT_TTL:
        return []
    return [CHECKS["SNAPSHOT_TTL_SLOW"](path=setting_path("SNAPSHOT_TTL"), value=value)]
