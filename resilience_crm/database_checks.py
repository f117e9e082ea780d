"""System checks on the app's databases: ``DATABASE_ALIAS`` and its router, views that call
``protected`` inside the transaction ``ATOMIC_REQUESTS`` opens (``transactions``), and a
PostgreSQL database without its driver (the ``[postgres]`` extra)."""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags, register
from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string

from resilience_crm import transactions
from resilience_crm.checks import (
    CHECKS,
    TAG,
    Check,
    is_postgres,
    setting_path,
    settings_check,
    table,
)
from resilience_crm.routers import ResilienceRouter, same_database

MESSAGES = table({
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
    "POSTGRES_WITHOUT_DRIVER": Check(
        "resilience_crm.E060",
        (
            'settings.DATABASES["{alias}"] uses PostgreSQL but no driver can be imported '
            "(psycopg: {error})."
        ),
        (
            'pip install "django-resilience-crm[postgres]" with "psycopg[c]" (built against '
            'your libpq) or "psycopg[binary]" (wheels, for development).'
        ),
    ),
})


#: The PostgreSQL drivers Django can use, the one the app is tested with first.
POSTGRES_DRIVERS = ("psycopg", "psycopg2")


@register(TAG)
def check_postgres_driver(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A PostgreSQL database needs psycopg, which the package does not install itself (its
    ``[postgres]`` extra does). Django refuses to start without the default database's
    driver; for another alias it would say so only at the first query."""
    aliases = [alias for alias, database in django_settings.DATABASES.items()
               if isinstance(database, dict)
               and is_postgres(database)]
    if not aliases:
        return []
    errors = []
    for driver in POSTGRES_DRIVERS:
        try:
            importlib.import_module(driver)
        except ImportError as err:  # not installed, or installed without a libpq to load
            errors.append(str(err))
        else:
            return []
    return [CHECKS["POSTGRES_WITHOUT_DRIVER"](alias=alias, error=errors[0]) for alias in aliases]


@settings_check(Tags.database)
def check_database_alias(config: dict[str, Any]) -> list[CheckMessage]:
    """``DATABASE_ALIAS`` works as a second alias of the default database, through the
    router (docs/settings.md, "The app's database alias")."""
    alias = config["DATABASE_ALIAS"]
    if not isinstance(alias, str) or alias == DEFAULT_DB_ALIAS or (
            alias not in django_settings.DATABASES):
        return []  # None, the default itself, or reported by check_aliases
    path = setting_path("DATABASE_ALIAS")
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


@settings_check(Tags.database, Tags.urls)
def check_views_in_request_transaction(config: dict[str, Any]) -> list[CheckMessage]:
    """Views that call ``protected`` must not run inside the request's transaction."""
    return [CHECKS["VIEW_IN_REQUEST_TRANSACTION"](route=route,
                                                  aliases=", ".join(map(repr, aliases)))
            for route, aliases in transactions.views_at_risk()]
