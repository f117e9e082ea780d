"""Gate tests on the real services: skip with the reason, or fail when CI requires them."""

from __future__ import annotations

import os

import pytest


def services_required() -> bool:
    return os.environ.get("RESILIENCE_CRM_REQUIRE_SERVICES", "") not in ("", "0")


def require_service(name: str, ok: bool, reason: str) -> None:
    """Carry on if ``ok``; otherwise skip, or fail when RESILIENCE_CRM_REQUIRE_SERVICES=1."""
    if ok:
        return
    message = f"{name} unavailable: {reason}"
    if services_required():
        pytest.fail(f"{message} (RESILIENCE_CRM_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)
