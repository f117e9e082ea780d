"""Take the app's database away in tests: route its tables to the second alias of the test
database (tests/settings.py), pointed at the test database, a dead port or a proxy."""

from __future__ import annotations

import contextlib

import pytest
from django.db import connections

#: The second alias of the test database that tests route the app's tables to.
APP_ALIAS = "resilience"


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
