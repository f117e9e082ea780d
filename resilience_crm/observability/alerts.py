"""Sentry alerts: one error event when a circuit opens an incident, one info event when it
recovers (on its own, or by an operator's reset). The app never initialises sentry-sdk;
without a client nothing is sent.

A worker's own breaker, standing in while the shared store is down, speaks for that worker
alone: its alerts are tagged ``store: local``, grouped under one fingerprint
(:data:`LOCAL_FINGERPRINT`), and each process sends at most one of them per store outage.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import resilience_crm.observability.drills as drills
from resilience_crm.breakers import machine
from resilience_crm.conf import settings

logger = logging.getLogger("resilience_crm.observability.alerts")

#: Transitions into ``open`` from these states start an incident; ``half_open -> open`` is
#: the same incident going on.
INCIDENT_STARTS = (machine.CLOSED, machine.METRICS_ONLY, machine.FORCED_CLOSED)
#: The one fingerprint every alert from a worker's own breaker is grouped under.
LOCAL_FINGERPRINT = ["resilience-circuit", "local-breaker"]

_local_lock = threading.Lock()
_local_sent = False  # this process sent its one local alert for the current store outage


def alert_for(from_state: str, to_state: str, manual: bool = False) -> str | None:
    """``"open"``, ``"recovered"`` or ``None``: which alert a transition calls for.
    ``manual``: an operator made it (a reset from an incident is its recovery)."""
    if to_state == machine.OPEN and from_state in INCIDENT_STARTS:
        return "open"
    if to_state == machine.CLOSED and (from_state == machine.HALF_OPEN
                                    or (manual and from_state in machine.IN_INCIDENT)):
        return "recovered"
    return None


def store_recovered() -> None:
    """The shared store answers again: the next outage may send its one local alert."""
    global _local_sent
    with _local_lock:
        _local_sent = False


def _claim_local_alert() -> bool:
    global _local_sent
    with _local_lock:
        claimed, _local_sent = not _local_sent, True
    return claimed


def send_alert(name: str, from_state: str, to_state: str, generation: int, reason: str,
               local: bool = False, actor: Any = None, source: str | None = None) -> bool:
    """Send the alert the transition calls for; never raises. Returns whether one was sent.
    ``actor`` and ``source`` (``"admin"``, ``"command"``): who made a manual change."""
    kind = alert_for(from_state, to_state, manual=actor is not None or bool(source))
    if kind is None or not settings.SENTRY_ALERTS:
        return False
    try:
        import sentry_sdk

        if not sentry_sdk.is_initialized() or (local and not _claim_local_alert()):
            return False
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("circuit", name)
            scope.set_tag("circuit_state", to_state)
            scope.set_tag("store", "local" if local else "shared")
            scope.fingerprint = (LOCAL_FINGERPRINT if local
                                 else ["resilience-circuit", name, kind])
            details = {"name": name, "from_state": from_state, "to_state": to_state,
                       "generation": generation, "reason": reason}
            if actor is not None:
                details["actor"] = str(actor)
                scope.set_tag("actor", str(actor))
            drill = None if local else drills.current()
            if drill is not None:
                details["drill"] = drill["run"]
                scope.set_tag("drill", drill["run"])
            scope.set_context("circuit", details)
            where = " on a worker's own breaker (the shared store is unavailable)" if local else ""
            if kind == "open":
                message = f"Circuit {name} opened{where} ({reason})"
                sentry_sdk.capture_message(message, level="error")
            else:
                by = (f" (reset by {actor or source})" if actor is not None or source
                      else "")
                sentry_sdk.capture_message(f"Circuit {name} recovered{where}{by}", level="info")
        return True
    except Exception:  # alerting must never break the request that tripped the circuit
        logger.exception("Sending the Sentry alert for circuit %s failed.", name)
        return False
