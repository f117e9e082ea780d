"""The protected data provider: what views call instead of the ORM bare.

``protected.read / write / rpc / auth`` run a call under its circuit's deadline, with
retries, error classes, cached read fallbacks and a durable queue for writes while the
database is down. Open ``facade.py`` first (the ``Provider`` class and ``protected``), then
``reads.py`` (the read cache), ``classify.py`` (which errors are whose), ``retries.py`` and
``deadlines.py`` (the call's budget) and ``queue.py`` (writes kept while the database is down).
``checks.py`` holds its system checks. Arrows: provider -> breakers, never the other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilience_crm.provider.facade import Provider, protected

__all__ = ["Provider", "protected"]


def __getattr__(name: str) -> Any:
    """``protected`` and ``Provider``, imported on first use (they need the app registry)."""
    if name in __all__:
        from resilience_crm.provider import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'resilience_crm.provider' has no attribute {name!r}")
