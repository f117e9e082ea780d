"""Tier rows win over settings, and ``migrate`` never overwrites one: a database another run
used (another benchmark's tiers, the demo's) would decide other limits. Each benchmark that
rate-limits writes its tiers' rows from its own settings with :func:`write`."""

from __future__ import annotations

from typing import Any


def write(tiers: dict[str, Any]) -> None:
    """The rows of ``tiers`` (``RESILIENCE_CRM["TIERS"]``), as the settings have them."""
    from resilience_crm.models import Tier

    for name, limits in tiers.items():
        Tier.objects.update_or_create(name=name, defaults={"limits": limits})
