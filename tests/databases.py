"""Take the app's database away in tests: route its tables to the second alias of the test
database (tests/settings.py), pointed at the test database, a dead port or a proxy; or add
an alias for one test only; or point the default alias itself through a proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connections

#: The second alias of the test database that tests route the app's tables to.
APP_ALIAS = "resilience"
#: A loopback port nothing listens on: a connection to it is refused at once.
CLOSED_PORT = 1
#: The alias of the test database behind a fault proxy (the ``database_behind_proxy``
#: fixture), and its pool: connections kept open, a second at most to wait for one.
PROXIED_ALIAS = "proxied"
PROXIED_POOL = {"min_size": 4, "max_size": 4, "timeout": 1.0}


def database_url(settings_dict: dict, **changes: Any) -> str:
    """A PostgreSQL alias's ``settings_dict``, with ``changes`` (``HOST``, ``PORT``), as the
    URL ``DATABASE_URL`` takes (for the demo's settings, or a server started with them)."""
    db = {**settings_dict, **changes}
    user, password = (quote(str(db[key] or ""), safe="") for key in ("USER", "PASSWORD"))
    return (f"postgres://{user}:{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
            f"/{quote(db['NAME'], safe='')}")


def transactional(request) -> None:
    """Make the test a transactional one on both aliases of the test database: what other
    threads write through their own connections is committed, and emptied afterwards."""
    request.node.add_marker(
        pytest.mark.django_db(transaction=True, databases=["default", APP_ALIAS]), append=False
    )
    request.getfixturevalue("transactional_db")


class Outage:
    """The database the app's tables live on (``DATABASE_ALIAS``), unreachable until
    :meth:`end`; afterwards the test database again."""

    def __init__(self, alias: str, settings_dict: dict, working: dict) -> None:
        self.alias = alias
        self.settings_dict = settings_dict
        self.working = working

    def end(self) -> None:
        """The server answers again at the configured address: the next query reconnects,
        in every thread (they share this settings dict)."""
        connections[self.alias].close()
        self.settings_dict.update(self.working)


@contextlib.contextmanager
def database_alias(request, settings, **changes):
    """``APP_ALIAS`` as the test database with ``changes``, in every thread, and the app's
    tables routed to it. The test becomes a transactional one on both aliases (what the
    alias writes from other threads is committed). Yields the alias's settings dict."""
    transactional(request)
    original = connections.settings[APP_ALIAS]
    connections.settings[APP_ALIAS] = settings_dict = {**original, **changes}
    _forget_connection(APP_ALIAS)
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "DATABASE_ALIAS": APP_ALIAS}
    try:
        yield settings_dict
    finally:
        _forget_connection(APP_ALIAS)
        connections.settings[APP_ALIAS] = original


def _forget_connection(alias: str) -> None:
    """Close this thread's connection to ``alias``; the next use builds one from settings."""
    connections[alias].close()
    del connections[alias]


class _Known(dict):
    """``DATABASES`` as the connection handler has them, plus one alias it can open in any
    thread but does not list: Django's test cases allow connections to an alias they do not
    list (one made after start-up), and refuse those to a listed alias a test did not
    declare."""

    def __init__(self, listed: dict, alias: str, settings_dict: dict) -> None:
        super().__init__(listed)
        # Asked, not copied: an extra alias inside another keeps the outer one.
        self.listed, self.alias, self.settings_dict = listed, alias, settings_dict

    def __contains__(self, key: object) -> bool:
        return key == self.alias or key in self.listed

    def __getitem__(self, key: Any) -> Any:
        return self.settings_dict if key == self.alias else self.listed[key]


@contextlib.contextmanager
def extra_database(alias: str, settings_dict: dict) -> Iterator[str]:
    """The alias ``alias`` with ``settings_dict``, in this thread and in any other (readiness
    probes run on threads of their own), for the duration."""
    listed = connections.settings
    connections.settings = _Known(listed, alias, settings_dict)
    try:
        yield alias
    finally:
        with contextlib.suppress(Exception):
            connections[alias].close()
        with contextlib.suppress(AttributeError):
            delattr(connections._connections, alias)
        connections.settings = listed


@contextlib.contextmanager
def default_database_through(proxy: Any, **overrides: Any) -> Iterator[dict]:
    """Point the ``default`` alias (in every thread) at ``proxy``, a
    :class:`tests.proxy.Proxy` in front of the real server, with ``overrides`` on its
    settings (``ATOMIC_REQUESTS``, ``OPTIONS``) for the duration."""
    settings_dict = connections["default"].settings_dict  # shared by every thread's wrapper
    saved = dict(settings_dict)
    connections["default"].close()
    settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port), **overrides)
    try:
        yield settings_dict
    finally:
        with contextlib.suppress(Exception):
            connections["default"].close()
        settings_dict.clear()
        settings_dict.update(saved)
