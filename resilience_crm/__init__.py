"""Keep a CRM's data access alive when its database, cache or upstream APIs fail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilience_crm.breakers.breaker import Breaker
    from resilience_crm.provider.facade import Provider

__all__ = ["get_breaker", "protected"]


def get_breaker(name: str) -> Breaker:
    """The breaker for the circuit ``name`` in this process (see DESIGN: ``get_breaker``)."""
    from resilience_crm.breakers.registry import get_breaker as _get

    return _get(name)



def __getattr__(name: str) -> Provider:
    """``protected``, imported on first use (it needs the app registry to be ready)."""
    if name == "protected":
        from resilience_crm.provider.facade import protected

        return protected
    raise AttributeError(f"module 'resilience_crm' has no attribute {name!r}")
