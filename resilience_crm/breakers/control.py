"""Manual control of a circuit, shared by the admin actions and the management commands.

A manual change is all or nothing. :func:`steer` changes the live state in the shared store
(every worker follows within ``SNAPSHOT_TTL``), which announces the transition and so writes
its ``CircuitEvent``, then keeps the forced state, its reason, actor and expiry on the
circuit's row. While the shared store is unreachable the change is not made in this worker
alone: it is saved on the row as ``pending`` and applied to the shared store, for every
worker, as soon as the store answers again (:func:`apply_pending`). When the database cannot
be written either, nothing changes and :class:`ManualChangeRefused` says so.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import DatabaseError, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from resilience_crm import aside
from resilience_crm.breakers import events, machine, registry
from resilience_crm.conf import settings
from resilience_crm.exceptions import ManualChangeRefused, StoreUnavailable
from resilience_crm.models import Circuit, CircuitEvent

logger = logging.getLogger("resilience_crm.breakers.control")

#: What an operator may set: ``closed`` resets, the rest hold the circuit in that state.
STEERABLE = (machine.CLOSED, *machine.FORCEABLE)
#: What the commands say of a change saved while the shared store is unreachable.
PENDING = ("{name}: {change} is saved but NOT yet in effect: the shared store is unreachable. "
           "It reaches every worker as soon as the store is back.")


@dataclass(frozen=True)
class Steered:
    """What became of a manual change."""

    name: str
    state: str
    #: ``True``: every worker has it now. ``False``: saved, and applied to every worker when
    #: the shared store is back.
    applied: bool
    #: The circuit's row, or ``None`` when the database could not be written (the live
    #: change still holds; its event waits in the buffer).
    circuit: Circuit | None

    @property
    def pending(self) -> bool:
        return not self.applied


def steer(name: str, state: str, *, actor: Any = None, reason: str = "",
          until: datetime | None = None, source: str = "") -> Steered:
    """Reset ``name`` (``state="closed"``) or force it into ``state`` on every worker.

    Raises :class:`ManualChangeRefused` when neither the shared store nor the database can
    take the change: then nothing has changed anywhere."""
    if state not in STEERABLE:
        raise ValueError(f"Cannot set {state!r}; choose one of {', '.join(STEERABLE)}.")
    # The query guard stands aside: the change may be the reset of the very circuit that
    # guards the database its row, its audit and (with the database store) its state are on.
    with aside.stand_aside():
        return _steer(name, state, actor=actor, reason=reason, until=until, source=source)


def _steer(name: str, state: str, *, actor: Any, reason: str, until: datetime | None,
           source: str) -> Steered:
    reason = reason or f"{'reset' if state == machine.CLOSED else state} from the {source or 'API'}"
    forced = _forced_fields(state, actor, reason, until)
    try:
        _apply(name, state, actor=actor, reason=reason, until=until, source=source)
    except StoreUnavailable as err:
        action = {"state": state, "reason": reason[:500], "until": until.isoformat() if until
                  else None, "actor_id": getattr(actor, "pk", None), "source": source,
                  "at": timezone.now().isoformat()}
        if actor is not None and action["actor_id"] is None:
            action["actor_name"] = str(actor)[:200]
        try:
            circuit = _save(name, forced, pending={"action": action})
        except DatabaseError as db_err:
            raise ManualChangeRefused(
                f"Circuit {name}: nothing changed. The shared store is unreachable ({err}) and "
                f"the database could not save the change for later ({db_err}).",
                circuit=name,
            ) from db_err
        logger.warning("Circuit %s: the shared store is unreachable; %s is saved and will "
                       "reach every worker when it is back.", name, state)
        return Steered(name, state, applied=False, circuit=circuit)
    events.flush()  # the operator expects the audit row once the action returns
    try:
        circuit = _save(name, forced, pending={"action": None})
    except DatabaseError as err:
        logger.warning("Circuit %s is now %s, but its row could not be updated (%s).",
                       name, state, err)
        return Steered(name, state, applied=True, circuit=None)
    return Steered(name, state, applied=True, circuit=circuit)


def push_config(name: str, overrides: dict[str, Any]) -> bool:
    """Hand a circuit's saved overrides to every worker; ``False`` when the shared store is
    unreachable, in which case they are marked pending and handed out when it is back."""
    try:
        registry.get_breaker(name).configure(overrides)
    except StoreUnavailable:
        logger.warning("Circuit %s: the shared store is unreachable; the saved overrides will "
                       "reach every worker when it is back.", name)
        _save(name, {}, pending={"config": True})
        return False
    return True


def apply_pending() -> int:
    """Apply the manual changes saved while the shared store was down; returns how many.

    Each row's pending change is claimed with a conditional update first, so across all the
    workers that find the store back, exactly one applies it."""
    applied = 0
    try:
        rows = list(Circuit.objects.exclude(pending={}).values_list("pk", "name", "pending"))
    except DatabaseError as err:
        logger.warning("Could not read pending circuit changes (%s); they wait.", err)
        return 0
    for pk, name, pending in rows:
        if not Circuit.objects.filter(pk=pk, pending=pending).update(pending={}):
            continue  # another worker claimed it
        try:
            action = pending.get("action")
            if action:
                until = parse_datetime(action["until"]) if action.get("until") else None
                if until is None or until > timezone.now():
                    actor = _user(action.get("actor_id")) or action.get("actor_name")
                    _apply(name, action["state"], actor=actor,
                           reason=action["reason"], until=until, source=action.get("source", ""))
            if pending.get("config"):
                config = Circuit.objects.filter(pk=pk).values_list("config", flat=True).first()
                registry.get_breaker(name).configure(dict(config or {}))
        except StoreUnavailable:
            # Down again: put it back for the next recovery, unless a newer change came.
            Circuit.objects.filter(pk=pk, pending={}).update(pending=pending)
            return applied
        except ValueError as err:  # overrides saved before they were valid
            logger.error("Circuit %s: could not apply the pending change %r (%s).", name,
                         pending, err)
            continue
        logger.info("Circuit %s: applied the change saved while the shared store was down.",
                    name)
        applied += 1
    if applied:
        events.flush()
    return applied


def command_actor() -> str:
    """Who runs a management command, as the audit trail and alerts name them: the OS user
    (``"alice (command)"``), or ``"command"`` when the OS does not say."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name, no USER/LOGNAME, no passwd entry (containers)
        return "command"
    return f"{user} (command)" if user else "command"


def forced_by(name: str, circuit: Circuit | None = None) -> str:
    """Who holds ``name`` in its forced state, never blank: the admin user on the row, else
    the name the live state keeps (a command's OS user), else the source of the event that
    forced it (``"command"``, ``"admin"``), else ``"code"`` (``Breaker.force`` called by the
    project's own code)."""
    if circuit is not None and circuit.forced_by_id:
        return str(circuit.forced_by)
    try:
        live = registry.get_store().read(name) or {}
    except Exception:  # the store's trouble is reported elsewhere; fall back on the record
        live = {}
    if live.get("actor"):
        return str(live["actor"])
    try:
        event = (CircuitEvent.objects.filter(circuit__name=name, to_state__in=machine.FORCEABLE)
                 .exclude(source=CircuitEvent.Source.LOCAL).order_by("-created_at", "-pk")
                 .values_list("source", flat=True).first())
    except DatabaseError:
        event = None
    return event if event in (CircuitEvent.Source.COMMAND, CircuitEvent.Source.ADMIN) \
        else "code"


def known_circuits() -> list[str]:
    """Circuits named in settings, then any others that have a row (e.g. made by code)."""
    names = list(settings.circuit_names())
    try:
        names += [n for n in Circuit.objects.values_list("name", flat=True) if n not in names]
    except DatabaseError as err:
        logger.warning("Could not list circuits from the database (%s).", err)
    return names


def _apply(name: str, state: str, *, actor: Any, reason: str, until: datetime | None,
           source: str) -> None:
    breaker = registry.get_breaker(name)
    if state == machine.CLOSED:
        breaker.reset(actor=actor, reason=reason, source=source)
    else:
        breaker.force(state, actor=actor, reason=reason, until=until, source=source)


def _forced_fields(state: str, actor: Any, reason: str, until: datetime | None) -> dict[str, Any]:
    if state == machine.CLOSED:
        return {"forced_state": "", "forced_reason": "", "forced_by": None, "forced_until": None}
    return {"forced_state": state, "forced_reason": reason[:500],
            "forced_by": actor if getattr(actor, "pk", None) else None, "forced_until": until}


def _save(name: str, fields: dict[str, Any], pending: dict[str, Any]) -> Circuit:
    """Set ``fields`` on the row and merge ``pending`` into its pending changes (a ``None``
    value removes that key)."""
    with transaction.atomic(using=router.db_for_write(Circuit)):
        circuit, _ = Circuit.objects.select_for_update().get_or_create(name=name)
        for field, value in fields.items():
            setattr(circuit, field, value)
        merged = dict(circuit.pending or {}) | pending
        circuit.pending = {key: value for key, value in merged.items() if value is not None}
        circuit.save(update_fields=[*fields, "pending", "updated_at"])
    return circuit


def _user(pk: Any) -> Any:
    if pk is None:
        return None
    return get_user_model().objects.filter(pk=pk).first()
