"""System checks on the rate limits' settings: the rate tables (validated by
:func:`~resilience_crm.ratelimit.rates.limits_errors`, as ``Tier.clean`` is), the limiter
store (resolved by :func:`~resilience_crm.ratelimit.limiter.store_path`), who is limited and
how, and what happens while the store is unreachable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags
from django.db import connections
from django.utils.module_loading import import_string

import resilience_crm.ratelimit.limiter as limiter
from resilience_crm import conf
from resilience_crm.checks import (
    CHECKS,
    MAX_SNAPSHOT_TTL,
    Check,
    choice_hint,
    is_number,
    listing,
    setting_path,
    settings_check,
    subclass_at,
    table,
    type_name,
)
from resilience_crm.ratelimit.rates import UNKNOWN_OP_CLASS, limits_errors, parse_rate
from resilience_crm.ratelimit.stores.base import BaseLimiterStore

#: Seconds: a longer wait on the database limiter store would hold requests, not protect them.
MAX_STORE_TIMEOUT = 30

MESSAGES = table({
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
    "RATELIMIT_STORE_INVALID": Check(
        "resilience_crm.E030",
        (
            "{path} is {value!r}, which is neither a limiter store name nor a dotted path to a "
            "limiter store class ({reason})."
        ),
        (
            'Use "auto", "redis", "database", "memory", or the dotted path of a subclass of '
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
    "RATELIMIT_STORE_DATABASE_NOT_POSTGRESQL": Check(
        "resilience_crm.E037",
        (
            "{path} selects the database limiter store, but the database {alias!r} the app's "
            "tables live on is {vendor}, not PostgreSQL: the store needs the function and the "
            "table migration 0007 installs there."
        ),
        (
            'Use RATELIMIT_STORE "auto" (Redis with a django-redis cache, else memory here), '
            '"redis", or "memory" with EXPECTED_PROCESSES 1.'
        ),
    ),
    "RATELIMIT_STORE_TIMEOUT_INVALID": Check(
        "resilience_crm.E038",
        "{path} must be a number of seconds above 0 and at most 30, not {value!r}.",
        "0.5 is the default: a decision waits at most that long for the database.",
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
    "REFUSAL_WITHOUT_SHAPE": Check(
        "resilience_crm.W024",
        (
            "REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES has TierRateThrottle, but neither "
            "resilience_crm.middleware.ResilienceMiddleware is in MIDDLEWARE nor "
            "resilience_crm.drf.exception_handler is EXCEPTION_HANDLER: a refusal is DRF's "
            "plain 429, without the problem body or the rate-limit headers."
        ),
        (
            'Add "resilience_crm.middleware.ResilienceMiddleware" to MIDDLEWARE (headers on '
            "every answer), or set EXCEPTION_HANDLER to resilience_crm.drf.exception_handler."
        ), warning=True,
    ),
})

#: Hints that replace a check's usual one where there is something closer to say.
HINT_TIERS_SHAPE = 'Example: {"free": {"read": "120/min", "write": ["5/s", "30/min"]}}.'
HINT_ENDPOINTS_SHAPE = 'Example: {"contact-list": {"read": "10/s"}}, keyed by URL name.'
HINT_GLOBAL_LIMITS_SHAPE = 'Example: {"write": "1000/s"}: shared by every client.'
HINT_OP_CLASS_UNKNOWN_CLOSE = "Did you mean {close!r}? Operation classes: {valid}."


def _op_class_unknown(path: str, op_class: Any) -> CheckMessage:
    hint = choice_hint(op_class, conf.OP_CLASSES, CHECKS["OP_CLASS_UNKNOWN"].hint,
                       HINT_OP_CLASS_UNKNOWN_CLOSE)
    return CHECKS["OP_CLASS_UNKNOWN"](path=path, op_class=op_class, hint=hint)


def _limits_errors(path: tuple[Any, ...], limits: Mapping[Any, Any]) -> list[CheckMessage]:
    """Errors in one ``{op_class: rate or [rates]}`` mapping at ``path``."""
    errors: list[CheckMessage] = []
    for op_class, kind, message in limits_errors(limits, conf.OP_CLASSES):
        if kind == UNKNOWN_OP_CLASS:
            errors.append(_op_class_unknown(setting_path(*path), op_class))
        else:
            errors.append(CHECKS["RATE_INVALID"](path=setting_path(*path, op_class),
                                                 error=message))
    return errors


def _table_errors(key: str, rates: Any, expected: str, hint: str) -> list[CheckMessage]:
    """Errors in ``TIERS`` or ``ENDPOINTS``: ``{name: {op_class: rate or [rates]}}``."""
    if not isinstance(rates, dict):
        return [CHECKS["LIMITS_SHAPE"](
            path=setting_path(key), expected=expected, type=type_name(rates), hint=hint,
        )]
    errors: list[CheckMessage] = []
    for name, limits in rates.items():
        if not isinstance(name, str):
            errors.append(CHECKS["LIMITS_SHAPE"](
                path=setting_path(key), expected="keyed by strings",
                type=f"the {type_name(name)} key {name!r}", hint=hint,
            ))
        elif not isinstance(limits, dict):
            errors.append(CHECKS["LIMITS_SHAPE"](
                path=setting_path(key, name), expected="a dict of {op_class: rate or [rates]}",
                type=type_name(limits), hint=hint,
            ))
        else:
            errors += _limits_errors((key, name), limits)
    return errors


@settings_check()
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
                    path=setting_path(key), value=value,
                    hint=CHECKS["TIER_UNKNOWN"].hint_for(valid=listing(names)),
                ))
    return errors


@settings_check()
def check_ratelimit_settings(config: dict[str, Any]) -> list[CheckMessage]:
    """``FAIL_OPEN``, ``AUTH_FAILURES``, ``TRUSTED_PROXIES``, and ``TIER_CACHE_TTL``'s
    one-second promise (a value that is not a duration at all is E015)."""
    errors: list[CheckMessage] = []
    fail_open = config["FAIL_OPEN"]
    if not isinstance(fail_open, dict):
        errors.append(CHECKS["FAIL_OPEN_INVALID"](
            path=setting_path("FAIL_OPEN"), expected="a dict of {op_class: True or False}",
            value=fail_open,
        ))
    else:
        for op_class, value in fail_open.items():
            if op_class not in conf.OP_CLASSES:
                errors.append(_op_class_unknown(setting_path("FAIL_OPEN"), op_class))
            elif not isinstance(value, bool):
                errors.append(CHECKS["FAIL_OPEN_INVALID"](
                    path=setting_path("FAIL_OPEN", op_class), expected="True or False",
                    value=value,
                ))

    auth_failures = config["AUTH_FAILURES"]
    if auth_failures is not None:
        try:
            parse_rate(auth_failures)
        except (TypeError, ValueError) as err:
            errors.append(CHECKS["RATE_INVALID"](path=setting_path("AUTH_FAILURES"), error=err))

    proxies = config["TRUSTED_PROXIES"]
    if isinstance(proxies, bool) or not isinstance(proxies, int) or proxies < 0:
        errors.append(CHECKS["TRUSTED_PROXIES_INVALID"](
            path=setting_path("TRUSTED_PROXIES"), value=proxies,
        ))

    ttl = config["TIER_CACHE_TTL"]
    if is_number(ttl) and ttl > MAX_SNAPSHOT_TTL:
        errors.append(CHECKS["TIER_CACHE_TTL_SLOW"](path=setting_path("TIER_CACHE_TTL"),
                                                    value=ttl))
    return errors


@settings_check(Tags.caches)
def check_ratelimit_store(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    store = config["RATELIMIT_STORE"]
    if not isinstance(store, str):
        reason = f"it is a {type_name(store)}"
    elif store == "auto":
        reason = ""  # a built-in store, whichever the cache decides
    else:
        reason = subclass_at(limiter.store_path(), BaseLimiterStore)[1]
    if reason:
        return [CHECKS["RATELIMIT_STORE_INVALID"](
            path=setting_path("RATELIMIT_STORE"), value=store, reason=reason,
        )]
    alias = config["CACHE_ALIAS"]
    if not isinstance(alias, str) or alias not in django_settings.CACHES:
        return []  # E011
    timeout = config["RATELIMIT_STORE_TIMEOUT"]
    if not is_number(timeout) or not 0 < timeout <= MAX_STORE_TIMEOUT:
        errors.append(CHECKS["RATELIMIT_STORE_TIMEOUT_INVALID"](
            path=setting_path("RATELIMIT_STORE_TIMEOUT"), value=timeout,
        ))
    path = limiter.store_path()
    cls = import_string(path)
    database = conf.database_alias()
    if getattr(cls, "needs_postgresql", False) and connections[database].vendor != "postgresql":
        errors.append(CHECKS["RATELIMIT_STORE_DATABASE_NOT_POSTGRESQL"](
            path=setting_path("RATELIMIT_STORE"), alias=database,
            vendor=connections[database].display_name,
        ))
    if path == limiter.STORE_ALIASES["redis"] and not conf.cache_is_redis(alias):
        errors.append(CHECKS["RATELIMIT_STORE_REDIS_WITHOUT_REDIS_CACHE"](
            path=setting_path("RATELIMIT_STORE"), alias=alias, backend=conf.cache_backend(alias),
        ))
    processes = config["EXPECTED_PROCESSES"]
    if not getattr(cls, "shared", True) and isinstance(processes, int) and processes > 1:
        errors.append(CHECKS["RATELIMIT_STORE_PER_PROCESS"](
            store=store, path=setting_path("EXPECTED_PROCESSES"), processes=processes,
        ))
    if config["AUTH_FAILURES"] and getattr(cls, "peek", None) is BaseLimiterStore.peek:
        errors.append(CHECKS["RATELIMIT_STORE_CANNOT_PEEK"](
            path=setting_path("RATELIMIT_STORE"), store=store,
        ))
    return errors


@settings_check(Tags.compatibility)
def check_refusals_keep_their_shape(config: dict[str, Any]) -> list[CheckMessage]:
    """The throttle leaves its decision on the request; the middleware or the DRF handler
    turns a refusal into the problem answer (:mod:`resilience_crm.ratelimit.headers`)."""
    rest = getattr(django_settings, "REST_FRAMEWORK", None)
    rest = rest if isinstance(rest, dict) else {}
    throttled = any(_is_a(entry, "resilience_crm.throttling", "TierRateThrottle")
                    for entry in rest.get("DEFAULT_THROTTLE_CLASSES") or ())
    if not throttled or any(_is_a(rest.get("EXCEPTION_HANDLER"), "resilience_crm.drf", name)
                            for name in ("exception_handler", "problem_exception_handler")) or any(
            _is_a(entry, "resilience_crm.middleware", "ResilienceMiddleware")
            for entry in django_settings.MIDDLEWARE):
        return []
    return [CHECKS["REFUSAL_WITHOUT_SHAPE"]()]


def _is_a(entry: Any, module: str, name: str) -> bool:
    """Whether ``entry`` (a dotted path or the object) is ``module.name`` or a subclass."""
    try:
        found = import_string(entry) if isinstance(entry, str) else entry
        ours = import_string(f"{module}.{name}")
    except ImportError:
        return False
    return found is ours or (isinstance(found, type) and isinstance(ours, type)
                             and issubclass(found, ours))


def _resolver_problem(resolver: Any) -> str:
    """Why ``TIER_RESOLVER`` names no callable, or ``""``."""
    if not isinstance(resolver, str):
        return f"it is a {type_name(resolver)}"
    try:
        if not callable(import_string(resolver)):
            return "it is not callable"
    except ImportError as err:
        return f"cannot import it: {err}"
    except Exception as err:  # noqa: BLE001  (importing user code may raise anything)
        return f"importing it raised {err!r}"
    return ""


@settings_check()
def check_ratelimit_values(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    resolver = config["TIER_RESOLVER"]
    reason = "" if resolver is None else _resolver_problem(resolver)
    if reason:
        errors.append(CHECKS["TIER_RESOLVER_INVALID"](
            path=setting_path("TIER_RESOLVER"), value=resolver, reason=reason,
        ))

    tiers = config["TIERS"] if isinstance(config["TIERS"], dict) else None
    for key in ("SHADOW_TIERS", "SHADOW_ENDPOINTS"):
        names = config[key]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            errors.append(CHECKS["SHADOW_INVALID"](path=setting_path(key), value=names))
        elif key == "SHADOW_TIERS" and tiers is not None:
            errors += [CHECKS["SHADOW_TIER_UNKNOWN"](
                path=setting_path(key), value=name,
                hint=CHECKS["SHADOW_TIER_UNKNOWN"].hint_for(valid=listing(tiers)),
            ) for name in names if name not in tiers]

    factor = config["ADAPTIVE_FACTOR"]
    if not is_number(factor) or not 0 < factor <= 1:
        errors.append(CHECKS["ADAPTIVE_FACTOR_INVALID"](
            path=setting_path("ADAPTIVE_FACTOR"), value=factor,
        ))

    if not isinstance(config["EXEMPT_STAFF"], bool):
        errors.append(CHECKS["EXEMPTION_INVALID"](
            path=setting_path("EXEMPT_STAFF"), expected="True or False",
            value=config["EXEMPT_STAFF"],
        ))
    permission = config["EXEMPT_PERMISSION"]
    if permission is not None and (not isinstance(permission, str)
                                   or permission.count(".") != 1 or not all(
                                       permission.split("."))):
        errors.append(CHECKS["EXEMPTION_INVALID"](
            path=setting_path("EXEMPT_PERMISSION"), expected='None or "app_label.codename"',
            value=permission,
        ))

    processes = config["EXPECTED_PROCESSES"]
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        errors.append(CHECKS["EXPECTED_PROCESSES_INVALID"](
            path=setting_path("EXPECTED_PROCESSES"), value=processes,
        ))

    global_limits = {} if config["GLOBAL_LIMITS"] is None else config["GLOBAL_LIMITS"]
    if not isinstance(global_limits, dict):
        errors.append(CHECKS["LIMITS_SHAPE"](
            path=setting_path("GLOBAL_LIMITS"), expected="a dict of {op_class: rate or [rates]}",
            type=type_name(global_limits), hint=HINT_GLOBAL_LIMITS_SHAPE,
        ))
    else:
        errors += _limits_errors(("GLOBAL_LIMITS",), global_limits)
    return errors
