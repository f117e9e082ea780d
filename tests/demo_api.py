"""Helpers for the demo API's tests: an authenticated client on the real services with the
provider on a clock the test moves (the ``api`` fixture in tests/conftest.py), forced
circuits, problem responses."""

from __future__ import annotations

from typing import Any

from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from resilience_crm import get_breaker
from resilience_crm.provider.facade import protected
from tests.clock import Clock

TTL, STALE_TTL = 60, 600
#: The password of the ``api`` fixture's user, ``ada``.
PASSWORD = "pw"


def api_client(settings: Any, monkeypatch: Any, user: Any) -> APIClient:
    """A client with ``user``'s token; breakers and reads on the ``redis`` cache alias,
    cached reads on a clock at ``client.clock``."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis", "FALLBACK_TTL": TTL,
                               "FALLBACK_STALE_TTL": STALE_TTL}
    clock = Clock()
    monkeypatch.setattr(protected, "_clock", clock)
    monkeypatch.setattr(protected.cache, "clock", clock)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.clock = clock  # type: ignore[attr-defined]
    client.user = user  # type: ignore[attr-defined]
    return client


def force_open(*names: str) -> None:
    for name in names:
        get_breaker(name).force("forced_open", reason="database outage")


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    return body
