"""Django REST framework glue: problem responses for every ``ResilienceError``, and the
fallback label on responses served from cache.

    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "resilience_crm.drf.exception_handler"}

and mix :class:`FallbackHeadersMixin` into views that read through ``protected``.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from resilience_crm import fallback
from resilience_crm.exceptions import ResilienceError

PROBLEM_CONTENT_TYPE = "application/problem+json"
#: ``type`` of problem bodies: this prefix and the code in lower case.
PROBLEM_TYPE_PREFIX = "urn:resilience-crm:problem:"
#: ``Retry-After`` sent with a 503 or 429 when nothing better is known, in seconds.
DEFAULT_RETRY_AFTER = 1


def problem_body(exc: ResilienceError) -> dict[str, Any]:
    """The RFC 9457 problem details for ``exc``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + exc.code.lower().replace("_", "-"),
        "title": exc.default_message,
        "status": exc.status,
        "detail": exc.message,
        "code": exc.code,
    }
    if exc.circuit:
        body["circuit"] = exc.circuit
    if exc.retry_after is not None:
        body["retry_after"] = retry_after_header(exc.retry_after)
    return body


def retry_after_header(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def problem_response(exc: ResilienceError) -> Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(retry_after_header(exc.retry_after))
    elif exc.status in (429, 503):
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER)
    return Response(problem_body(exc), status=exc.status, headers=headers,
                    content_type=PROBLEM_CONTENT_TYPE)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every :class:`ResilienceError` as ``application/problem+json``
    (503, 429, 504, 409, 422) and its ``Retry-After``."""
    if isinstance(exc, ResilienceError):
        return problem_response(exc)
    return drf_exception_handler(exc, context)


class FallbackHeadersMixin:
    """Labels responses built from cached or degraded data: ``X-Resilience-Fallback`` and
    ``Age``."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        fallback.begin()
        super().initial(request, *args, **kwargs)  # type: ignore[misc]

    def finalize_response(self, request: Request, response: Response, *args: Any,
                          **kwargs: Any) -> Response:
        response = super().finalize_response(  # type: ignore[misc]
            request, response, *args, **kwargs)
        for name, value in fallback.headers().items():
            response[name] = value
        return response
