"""Coloured badges for a circuit's state and a queued write's state: the one place their
colours are decided, for the lists, the circuit's page and the dashboard."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

from resilience_crm.breakers import machine
from resilience_crm.models import QueuedWrite

#: Badge colours per state: green passes calls, red rejects them, amber is trying or overridden.
STATE_COLOURS = {
    machine.CLOSED: "#1e7e34",
    machine.OPEN: "#b52a1c",
    machine.HALF_OPEN: "#b36b00",
    machine.FORCED_OPEN: "#7a1010",
    machine.FORCED_CLOSED: "#35586c",
    machine.DISABLED: "#6c757d",
    machine.METRICS_ONLY: "#5a4a8a",
}
#: A queued write: waiting (amber), done (green), needs a person (red).
WRITE_COLOURS: dict[str, str] = {
    QueuedWrite.State.PENDING: "#b36b00",
    QueuedWrite.State.APPLYING: "#35586c",
    QueuedWrite.State.APPLIED: "#1e7e34",
    QueuedWrite.State.FAILED: "#b52a1c",
    QueuedWrite.State.DEAD: "#7a1010",
}
_STYLE = ("background:{};color:#fff;padding:2px 8px;border-radius:10px;font-weight:600;"
          "white-space:nowrap")


def state_badge(state: str) -> SafeString:
    """A circuit state, e.g. ``forced open`` on dark red."""
    return format_html(
        '<span class="resilience-state resilience-state-{}" style="' + _STYLE + '">{}</span>',
        state, STATE_COLOURS.get(state, "#6c757d"), state.replace("_", " "),
    )


def write_badge(state: str) -> SafeString:
    """A queued write's state, e.g. ``dead letter`` on dark red."""
    labels: dict[str, str] = {str(value): str(label)
                              for value, label in QueuedWrite.State.choices}
    label = labels.get(state, state)
    return format_html(
        '<span class="resilience-write resilience-write-{}" style="' + _STYLE + '">{}</span>',
        state, WRITE_COLOURS.get(state, "#6c757d"), label,
    )
