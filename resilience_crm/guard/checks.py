"""System checks on the query guard's settings: ``PROTECT_QUERIES`` names databases that
exist, whose ``ENGINE`` is a guard backend, and circuits (one not in ``CIRCUITS`` is made with
``CIRCUIT_DEFAULTS``, like any other); ``QUERY_TIMEOUT`` gives seconds to PostgreSQL aliases;
and a warning when the app's own tables sit on a guarded alias."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags
from django.db.utils import load_backend

from resilience_crm.checks import (
    CHECKS,
    Check,
    is_number,
    is_postgres,
    listing,
    setting_path,
    settings_check,
    table,
    type_name,
)
from resilience_crm.guard.connection import GuardedDatabaseWrapper

#: The guard's backends, one per Django backend it extends.
BACKENDS = ("resilience_crm.guard.backends.postgresql", "resilience_crm.guard.backends.sqlite3")

MESSAGES = table({
    "GUARD_SHAPE": Check(
        "resilience_crm.E040",
        "{path} must be a dict of {expected}, not {found}.",
        'For example RESILIENCE_CRM["PROTECT_QUERIES"] = {{"default": "crm.db"}}.',
    ),
    "GUARD_ALIAS_UNKNOWN": Check(
        "resilience_crm.E041",
        "{path} names the database {alias!r}, which is not in settings.DATABASES.",
        "Databases: {valid}.",
    ),
    "GUARD_ENGINE": Check(
        "resilience_crm.E042",
        (
            'settings.DATABASES["{alias}"]["ENGINE"] is {engine!r}, which cannot guard its '
            "connections, so {path} would guard its statements but not its connects: every "
            "request would still wait for a connection to a database known to be down."
        ),
        "Use one of the guard's backends: {backends}.",
    ),
    "GUARD_OWN_TABLES": Check(
        "resilience_crm.W040",
        (
            "The app's own tables (circuit events, metrics) are on the guarded database "
            "{alias!r}: {path} counts their writes on circuit {circuit!r}, and refuses them "
            "while it is open (the database store's steps and manual changes pass)."
        ),
        (
            'Set RESILIENCE_CRM["DATABASE_ALIAS"] to another alias (a second entry for the same '
            "database will do) that PROTECT_QUERIES does not guard, or silence this warning if "
            "counting them is what you want."
        ), warning=True,
    ),
})


def _guarded(config: dict[str, Any], key: str) -> dict[Any, Any]:
    value = config[key]
    return value if isinstance(value, dict) else {}


@settings_check(Tags.database)
def check_protect_queries(config: dict[str, Any]) -> list[CheckMessage]:
    """``PROTECT_QUERIES``: ``{alias: circuit}``, each alias a database whose backend guards
    its connects."""
    expected = "database aliases to circuit names"
    path, value, errors = _mapping(config, "PROTECT_QUERIES", expected)
    for alias, circuit in value.items():
        if not isinstance(circuit, str) or not circuit:
            errors.append(CHECKS["GUARD_SHAPE"](path=path, expected=expected,
                                                found=f"{circuit!r} for {alias!r}"))
        elif not isinstance(alias, str) or alias not in django_settings.DATABASES:
            errors.append(_unknown_alias(path, alias))
        elif not _guards_connects(alias):
            engine = django_settings.DATABASES[alias].get("ENGINE")
            errors.append(CHECKS["GUARD_ENGINE"](
                alias=alias, engine=engine, path=path,
                hint=CHECKS["GUARD_ENGINE"].hint_for(backends=listing(BACKENDS))))
    return errors


@settings_check(Tags.database)
def check_query_timeout(config: dict[str, Any]) -> list[CheckMessage]:
    """``QUERY_TIMEOUT``: ``{alias: seconds}``, each a PostgreSQL database and a number above 0."""
    expected = "PostgreSQL database aliases to seconds above 0"
    path, value, errors = _mapping(config, "QUERY_TIMEOUT", expected)
    for alias, seconds in value.items():
        database = django_settings.DATABASES.get(alias) if isinstance(alias, str) else None
        if database is None:
            errors.append(_unknown_alias(path, alias))
        elif not is_number(seconds) or seconds <= 0 or not is_postgres(database):
            errors.append(CHECKS["GUARD_SHAPE"](path=path, expected=expected,
                                                found=f"{seconds!r} for {alias!r}"))
    return errors


@settings_check(Tags.database)
def check_own_tables(config: dict[str, Any]) -> list[CheckMessage]:
    """Warn when the app's own tables share a guarded alias (``DATABASE_ALIAS`` unset or
    guarded too)."""
    alias = config["DATABASE_ALIAS"] or "default"
    if not isinstance(alias, str):
        return []  # E012
    circuit = _guarded(config, "PROTECT_QUERIES").get(alias)
    if not isinstance(circuit, str):
        return []
    return [CHECKS["GUARD_OWN_TABLES"](alias=alias, circuit=circuit,
                                       path=setting_path("PROTECT_QUERIES"))]


def _mapping(config: dict[str, Any], key: str,
             expected: str) -> tuple[str, dict[Any, Any], list[CheckMessage]]:
    """The setting's path, its entries, and ``E040`` when it is not a dict (no entries)."""
    path, value = setting_path(key), config[key]
    if isinstance(value, dict):
        return path, value, []
    return path, {}, [CHECKS["GUARD_SHAPE"](path=path, expected=expected,
                                            found=f"a {type_name(value)}")]


def _unknown_alias(path: str, alias: Any) -> CheckMessage:
    return CHECKS["GUARD_ALIAS_UNKNOWN"](
        path=path, alias=alias,
        hint=CHECKS["GUARD_ALIAS_UNKNOWN"].hint_for(valid=listing(django_settings.DATABASES)))


def _guards_connects(alias: str) -> bool:
    engine = django_settings.DATABASES[alias].get("ENGINE")
    try:
        wrapper = load_backend(str(engine)).DatabaseWrapper
    except Exception:  # noqa: BLE001  (Django reports a backend that does not load)
        return True
    return isinstance(wrapper, type) and issubclass(wrapper, GuardedDatabaseWrapper)
