"""What a circuit's page and its dashboard card show besides the form: the configuration in
force and where each value comes from, who holds a forced state, and the buttons an
operator may press (each asks for a reason, and Force open for an optional expiry, before
it acts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resilience_crm.breakers import machine
from resilience_crm.breakers.control import forced_by
from resilience_crm.conf import BREAKER_DEFAULTS, settings
from resilience_crm.models import Circuit

#: Where a breaker setting's value comes from, weakest first.
ORIGINS = ("default", "CIRCUIT_DEFAULTS", "CIRCUITS", "admin override")


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    origin: str

    @property
    def overridden(self) -> bool:
        return self.origin != "default"


def config_in_force(name: str, overrides: dict[str, Any] | None) -> list[Setting]:
    """Every breaker setting of circuit ``name`` as the workers apply it: the defaults, then
    ``CIRCUIT_DEFAULTS``, then ``CIRCUITS[name]``, then the overrides saved in the admin."""
    circuits = settings.CIRCUITS if isinstance(settings.CIRCUITS, dict) else {}
    given: list[Any] = [BREAKER_DEFAULTS, settings.CIRCUIT_DEFAULTS, circuits.get(name),
                        overrides]
    layers = [layer if isinstance(layer, dict) else {} for layer in given]
    found: dict[str, Setting] = {}
    for origin, layer in zip(ORIGINS, layers, strict=True):
        for key, value in layer.items():
            if key in BREAKER_DEFAULTS:
                found[key] = Setting(key, value, origin)
    return [found[key] for key in BREAKER_DEFAULTS if key in found]


@dataclass(frozen=True)
class Hold:
    """A forced state as the operator sees it on a card."""

    state: str
    reason: str
    by: str
    until: Any

    @property
    def label(self) -> str:
        return self.state.replace("_", " ").capitalize()


def hold(name: str, circuit: Circuit | None, live_state: str) -> Hold | None:
    """Who holds circuit ``name`` in its forced state, why and until when (``circuit``: its
    row, if it has one); ``None`` when it is not forced."""
    if live_state not in machine.FORCEABLE:
        return None
    if circuit is None or circuit.forced_state != live_state:  # forced by code, not steered
        return Hold(live_state, "", forced_by(name, None), None)
    return Hold(live_state, circuit.forced_reason, forced_by(name, circuit),
                circuit.forced_until)


def buttons(allowed: set[str], live_state: str) -> list[dict[str, Any]]:
    """The buttons a card or page offers for a circuit in ``live_state``: a forced circuit
    offers Release (a reset) instead of Force open; one that is closed, no Reset."""
    offered = []
    if "reset" in allowed and live_state != machine.CLOSED:
        label = "Release" if live_state in machine.FORCEABLE else "Reset"
        offered.append({"action": "reset", "label": label, "until": False,
                        "confirm": f"Confirm: {label.lower()}"})
    if "force_open" in allowed and live_state != machine.FORCED_OPEN:
        offered.append({"action": "force_open", "label": "Force open", "until": True,
                        "confirm": "Confirm: force open"})
    return offered
