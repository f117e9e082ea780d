"""Views that call ``protected`` and the request's transaction (``ATOMIC_REQUESTS``).

With ``ATOMIC_REQUESTS`` on a database, Django opens a transaction on it, and so connects,
before any of the view's code runs: while that database is down, the view fails with a 500
before ``protected`` can serve its cache or queue its write. :func:`non_atomic` keeps the
request's transaction away from a view on every database; each provider call still runs in
a transaction of its own. :class:`~resilience_crm.drf.FallbackHeadersMixin` marks its views
so; :func:`views_at_risk` finds the rest for the system check ``resilience_crm.W005``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import CodeType
from typing import Any, TypeVar

from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver

from resilience_crm import provider
from resilience_crm.provider import facade

View = TypeVar("View", bound=Callable[..., Any])


class EveryAlias(set[str]):
    """The ``_non_atomic_requests`` of a view that no database's request transaction wraps:
    Django asks it whether an alias is in it, and the answer is always yes."""

    def __contains__(self, alias: object) -> bool:
        return True


def non_atomic(view: View) -> View:
    """Run ``view`` outside the transaction ``ATOMIC_REQUESTS`` opens, on every database
    (Django's ``transaction.non_atomic_requests`` names one alias)::

        @non_atomic
        def contact(request, pk): ...

        path("import/", non_atomic(ContactImport.as_view()))
    """
    view._non_atomic_requests = EveryAlias()  # type: ignore[attr-defined]
    return view


def atomic_aliases(view: Callable[..., Any]) -> list[str]:
    """The databases whose ``ATOMIC_REQUESTS`` wrap ``view`` in a transaction."""
    skipped: set[str] = getattr(view, "_non_atomic_requests", set())
    return [alias for alias, database in settings.DATABASES.items()
            if database.get("ATOMIC_REQUESTS") and alias not in skipped]


def calls_protected(view: Callable[..., Any]) -> bool:
    """Whether the code of ``view`` (its class's methods, for a class-based view) names
    ``protected``, imported from :mod:`resilience_crm`."""
    cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
    if cls is None:
        return _names_protected(inspect.unwrap(view))
    return any(_names_protected(inspect.unwrap(member))
               for klass in cls.__mro__ for member in vars(klass).values()
               if inspect.isfunction(member))


def _names_protected(function: Any) -> bool:
    code = getattr(function, "__code__", None)
    if not isinstance(code, CodeType) or "protected" not in _names(code):
        return False
    return any(value is facade.protected or value is facade or value is provider
               for value in function.__globals__.values())


def _names(code: CodeType) -> set[str]:
    """The global and attribute names ``code`` uses, nested functions and lambdas included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _names(constant)
    return names


def views_at_risk(urlconf: str | None = None) -> list[tuple[str, list[str]]]:
    """``(route, aliases)`` of each view in ``urlconf`` that calls ``protected`` inside the
    transaction of ``ATOMIC_REQUESTS`` on ``aliases``."""
    if not any(database.get("ATOMIC_REQUESTS") for database in settings.DATABASES.values()):
        return []
    found = []
    for route, view in _views(get_resolver(urlconf).url_patterns, ""):
        aliases = atomic_aliases(view)
        if aliases and calls_protected(view):
            found.append((route, aliases))
    return found


def _views(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _views(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback
