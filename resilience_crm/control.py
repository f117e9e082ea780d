"""Manual control of a circuit, shared by the admin actions and the management commands.

:func:`steer` changes the live state in the shared store (every worker follows within
``SNAPSHOT_TTL``), which announces the transition and so writes its ``CircuitEvent``, then
keeps the forced state, its reason, actor and expiry on the circuit's row.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import DatabaseError

from resilience_crm import core, events, registry
from resilience_crm.conf import settings

logger = logging.getLogger("resilience_crm.control")

#: What an operator may set: ``closed`` resets, the rest hold the circuit in that state.
STEERABLE = (core.CLOSED, *core.FORCEABLE)


def steer(name: str, state: str, *, actor: Any = None, reason: str = "",
          until: datetime | None = None, source: str = "") -> Any:
    """Reset ``name`` (``state="closed"``) or force it into ``state``; returns its ``Circuit``
    row, or ``None`` when the database could not be written (the live change still holds)."""
    if state not in STEERABLE:
        raise ValueError(f"Cannot set {state!r}; choose one of {', '.join(STEERABLE)}.")
    breaker = registry.get_breaker(name)
    if state == core.CLOSED:
        breaker.reset(actor=actor, reason=reason or f"reset from the {source or 'API'}",
                      source=source)
        forced: dict[str, Any] = {"forced_state": "", "forced_reason": "", "forced_by": None,
                  "forced_until": None}
    else:
        breaker.force(state, actor=actor, reason=reason or f"{state} from the {source or 'API'}",
                      until=until, source=source)
        forced = {"forced_state": state, "forced_reason": reason[:500],
                  "forced_by": actor if getattr(actor, "pk", None) else None,
                  "forced_until": until}
    events.flush()  # the operator expects the audit row once the action returns
    try:
        from resilience_crm.models import Circuit

        circuit, _ = Circuit.objects.get_or_create(name=name)
        for field, value in forced.items():
            setattr(circuit, field, value)
        circuit.save(update_fields=[*forced, "updated_at"])
    except DatabaseError as err:
        logger.warning("Circuit %s is now %s, but its row could not be updated (%s).",
                       name, state, err)
        return None
    return circuit


def known_circuits() -> list[str]:
    """Circuits named in settings, then any others that have a row (e.g. made by code)."""
    names = list(settings.circuit_names())
    try:
        from resilience_crm.models import Circuit

        names += [n for n in Circuit.objects.values_list("name", flat=True) if n not in names]
    except DatabaseError as err:
        logger.warning("Could not list circuits from the database (%s).", err)
    return names
