"""``application/problem+json`` responses (RFC 9457) for the app's own refusals."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse

CONTENT_TYPE = "application/problem+json"
#: ``type`` of each problem, by ``code``; documented in docs/ratelimiting.md.
TYPES = {
    "RATE_LIMITED": "urn:resilience-crm:problem:rate-limited",
    "STORE_UNAVAILABLE": "urn:resilience-crm:problem:store-unavailable",
}


def problem_response(status: int, code: str, title: str, detail: str,
                     **extra: Any) -> JsonResponse:
    """A problem response with ``type``, ``title``, ``status``, ``detail``, ``code`` and any
    ``extra`` members."""
    body = {"type": TYPES.get(code, "about:blank"), "title": title, "status": status,
            "detail": detail, "code": code, **extra}
    return JsonResponse(body, status=status, content_type=CONTENT_TYPE)
