"""Keep a CRM's data access alive when its database, cache or upstream APIs fail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilience_crm.breaker import Breaker

__all__ = ["get_breaker"]


def get_breaker(name: str) -> Breaker:
    """The breaker for the circuit ``name`` in this process (see DESIGN: ``get_breaker``)."""
    from resilience_crm.registry import get_breaker as _get

    return _get(name)

