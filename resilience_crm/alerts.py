"""Sentry alerts: one error event when a circuit opens an incident, one info event when it
recovers. The app never initialises sentry-sdk; without a client nothing is sent."""

from __future__ import annotations

import logging
from typing import Any

from resilience_crm import core
from resilience_crm.conf import settings

logger = logging.getLogger("resilience_crm.alerts")

#: Transitions into ``open`` from these states start an incident; ``half_open -> open`` is
#: the same incident going on.
INCIDENT_STARTS = (core.CLOSED, core.METRICS_ONLY, core.FORCED_CLOSED)


def alert_for(from_state: str, to_state: str) -> str | None:
    """``"open"``, ``"recovered"`` or ``None``: which alert a transition calls for."""
    if to_state == core.OPEN and from_state in INCIDENT_STARTS:
        return "open"
    if to_state == core.CLOSED and from_state == core.HALF_OPEN:
        return "recovered"
    return None


def send_alert(name: str, from_state: str, to_state: str, generation: int, reason: str,
               local: bool = False, **extra: Any) -> bool:
    """Send the alert the transition calls for; never raises. Returns whether one was sent."""
    kind = alert_for(from_state, to_state)
    if kind is None or not settings.SENTRY_ALERTS:
        return False
    try:
        import sentry_sdk

        if not sentry_sdk.is_initialized():
            return False
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("circuit", name)
            scope.set_tag("circuit_state", to_state)
            scope.set_tag("store", "local" if local else "shared")
            scope.fingerprint = ["resilience-circuit", name, kind]
            scope.set_context("circuit", {
                "name": name, "from_state": from_state, "to_state": to_state,
                "generation": generation, "reason": reason,
            })
            if kind == "open":
                message = f"Circuit {name} opened ({reason})"
                sentry_sdk.capture_message(message, level="error")
            else:
                sentry_sdk.capture_message(f"Circuit {name} recovered", level="info")
        return True
    except Exception:  # alerting must never break the request that tripped the circuit
        logger.exception("Sending the Sentry alert for circuit %s failed.", name)
        return False
