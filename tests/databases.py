"""Database aliases that exist for one test: unreachable ones, or ones behind a proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Known(dict):
    """``DATABASES`` as the connection handler has them, plus one alias it can open in any
    thread but does not list: Django's test cases allow connections to an alias they do not
    list (one made after start-up), and refuse those to a listed alias a test did not
    declare."""

    def __init__(self, listed: dict, alias: str, settings_dict: dict) -> None:
        super().__init__(listed)
        self.alias, self.settings_dict = alias, settings_dict

    def __contains__(self, key: object) -> bool:
        return key == self.alias or super().__contains__(key)

    def __getitem__(self, key: Any) -> Any:
        return self.settings_dict if key == self.alias else super().__getitem__(key)


@contextlib.contextmanager
def extra_database(alias: str, settings_dict: dict) -> Iterator[str]:
    """The alias ``alias`` with ``settings_dict``, in this thread and in any other (readiness
    probes run on threads of their own), for the duration."""
    from django.db import connections

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
    from django.db import connections

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
