"""``application/problem+json`` responses (RFC 9457): the one builder behind every error
answer the app makes, from the DRF exception handler and from the middleware alike.

Every body has ``type`` (``urn:resilience-crm:problem:`` and the code in lower case),
``title`` (one per code), ``status``, ``detail`` and ``code``; a 429 also has
``violated_policies`` (empty when the limit is an upstream's and its policies are unknown).
Every 429 and 503 carries ``Retry-After``, at least one second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from django.http import JsonResponse

from resilience_crm.exceptions import RateLimited, ResilienceError

CONTENT_TYPE = "application/problem+json"
#: ``type`` of problem bodies: this prefix and the code in lower case, ``_`` as ``-``.
TYPE_PREFIX = "urn:resilience-crm:problem:"
#: ``Retry-After`` of a 429 or 503 when nothing better is known, in seconds.
DEFAULT_RETRY_AFTER = 1
#: Statuses that always say when to come back.
RETRY_STATUSES = (429, 503)


def problem_type(code: str) -> str:
    return TYPE_PREFIX + code.lower().replace("_", "-")


def retry_after_header(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, so a client that waits them conforms,
    and at least one, so no client is told to come back at once."""
    return max(1, math.ceil(seconds - 1e-9))


def problem_response(status: int, code: str, title: str, detail: str, *,
                     retry_after: float | None = None,
                     headers: Mapping[str, str] | None = None,
                     **extra: Any) -> JsonResponse:
    """The problem response: ``type``, ``title``, ``status``, ``detail``, ``code`` and any
    ``extra`` members; ``Retry-After`` (also as ``retry_after`` in the body) when
    ``retry_after`` is known, :data:`DEFAULT_RETRY_AFTER` for a 429 or 503 when it is not;
    ``headers`` (the rate-limit headers, say) added as they are."""
    body = {"type": problem_type(code), "title": title, "status": status, "detail": detail,
            "code": code, **extra}
    wait = None
    if retry_after is not None:
        wait = body["retry_after"] = retry_after_header(retry_after)
    elif status in RETRY_STATUSES:
        wait = DEFAULT_RETRY_AFTER
    response = JsonResponse(body, status=status, content_type=CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    if wait is not None:
        response["Retry-After"] = str(wait)
    return response


def error_response(exc: ResilienceError,
                   headers: Mapping[str, str] | None = None) -> JsonResponse:
    """The problem response for ``exc``: its status, code, title (the status's reason phrase
    when it has none) and message, its circuit and its ``Retry-After``; a
    :class:`RateLimited` adds its ``violated_policies``. ``headers``: the rate-limit headers
    of the request's decision, when it went through the limiter."""
    extra: dict[str, Any] = {}
    if exc.circuit:
        extra["circuit"] = exc.circuit
    if isinstance(exc, RateLimited):
        extra["violated_policies"] = list(exc.violated_policies)
    title = exc.title or HTTPStatus(exc.status).phrase
    return problem_response(exc.status, exc.code, title, exc.message,
                            retry_after=exc.retry_after, headers=headers, **extra)
