"""The circuit actions' shared part: the action bar's reason and expiry, steering each selected
circuit with a message per outcome, and the diff logged when an operator edits a circuit's
settings. Every change goes through :func:`resilience_crm.breakers.control.steer`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from resilience_crm.breakers import machine
from resilience_crm.breakers.control import steer
from resilience_crm.exceptions import ManualChangeRefused
from resilience_crm.models import Circuit


class CircuitActionForm(ActionForm):
    """The action bar, with the reason and expiry that forced states and resets carry.

    ``until`` is parsed by the action itself, so a bad value is reported as such rather than
    as "no action selected"."""

    reason = forms.CharField(
        required=False, label="Reason",
        widget=forms.TextInput(attrs={"placeholder": "why (kept in the audit trail)"}),
    )
    until = forms.CharField(
        required=False, label="Until",
        widget=forms.TextInput(attrs={"placeholder": "until YYYY-MM-DD HH:MM (optional)"}),
    )


def until_of(value: str) -> Any:
    """The expiry typed in the action bar, in the current time zone; ``None`` when blank."""
    until = forms.DateTimeField(required=False).clean(value.strip())
    if until is not None and until <= timezone.now():
        raise forms.ValidationError("Until must be in the future.")
    return until


def steer_selected(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Circuit],
           state: str) -> None:
    try:
        until = until_of(request.POST.get("until", "")) if state != machine.CLOSED else None
    except forms.ValidationError as err:
        modeladmin.message_user(request, f"Nothing changed: {' '.join(err.messages)}",
                                messages.ERROR)
        return
    reason = request.POST.get("reason", "").strip()[:200]
    done: list[str] = []
    pending: list[str] = []
    for circuit in queryset:
        try:
            outcome = steer(circuit.name, state, actor=request.user, reason=reason, until=until,
                            source="admin")
        except ManualChangeRefused as err:
            modeladmin.message_user(request, err.message, messages.ERROR)
            continue
        if state == machine.CLOSED:
            message = f"Reset the circuit. {reason}"
        else:
            expiry = f" until {until:%Y-%m-%d %H:%M %Z}" if until else ""
            message = f"Set the circuit to {state}{expiry}. {reason}"
        if outcome.pending:
            message = f"Saved, pending the shared store: {message}"
        modeladmin.log_change(request, circuit, message.strip())
        (done if outcome.applied else pending).append(circuit.name)
    verb = "Reset" if state == machine.CLOSED else f"Set to {state.replace('_', ' ')}:"
    if done:
        modeladmin.message_user(request, f"{verb} {', '.join(done)}.", messages.SUCCESS)
    if pending:
        modeladmin.message_user(
            request,
            f"Pending: {', '.join(pending)}. The shared store is unreachable, so the change is "
            f"saved and not yet in effect; it reaches every worker as soon as the store is back.",
            messages.WARNING,
        )


def config_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``"failure_threshold: 5 -> 10; window: (default) -> 30"`` for two override dicts."""
    keys = sorted(set(before) | set(after))
    return "; ".join(
        f"{key}: {before.get(key, '(default)')!r} -> {after.get(key, '(default)')!r}"
        .replace("'(default)'", "(default)")
        for key in keys if before.get(key, _UNSET) != after.get(key, _UNSET)
    )


_UNSET = object()
