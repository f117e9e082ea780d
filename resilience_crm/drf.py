"""Django REST framework glue: problem responses for every ``ResilienceError``, and the
fallback label on responses served from cache.

    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "resilience_crm.drf.exception_handler"}

and mix :class:`FallbackHeadersMixin` into views that call ``protected``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponseBase
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from resilience_crm.exceptions import ResilienceError
from resilience_crm.problems import error_response
from resilience_crm.provider import labels
from resilience_crm.ratelimit.headers import decision_of, headers, refusal
from resilience_crm.transactions import non_atomic


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponseBase | None:
    """DRF's handler, with every :class:`ResilienceError` (503, 429, 504, 409, 422) and every
    refusal of :class:`~resilience_crm.throttling.TierRateThrottle` as the app's
    ``application/problem+json`` answer (:mod:`resilience_crm.problems`), with the
    rate-limit headers of the request's decision when it has one."""
    request = context.get("request")
    decision = decision_of(request) if request is not None else None
    if isinstance(exc, ResilienceError):
        set_rollback()
        return error_response(exc, headers(decision) if decision is not None else None)
    if decision is not None and not decision.allowed and isinstance(exc, APIException):
        set_rollback()
        return refusal(decision)  # Throttled, or the store's 503 for a closed op class
    return drf_exception_handler(exc, context)


class FallbackHeadersMixin:
    """Labels responses built from cached or degraded data: ``X-Resilience-Fallback`` and
    ``Age``; and keeps the view out of the request's transaction (``ATOMIC_REQUESTS``), so
    that ``protected`` can answer while the database is down (:func:`non_atomic`)."""

    @classmethod
    def as_view(cls, *args: Any, **kwargs: Any) -> Any:
        return non_atomic(super().as_view(*args, **kwargs))  # type: ignore[misc]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        labels.begin()
        super().initial(request, *args, **kwargs)  # type: ignore[misc]

    def finalize_response(self, request: Request, response: Response, *args: Any,
                          **kwargs: Any) -> Response:
        response = super().finalize_response(  # type: ignore[misc]
            request, response, *args, **kwargs)
        for name, value in labels.headers().items():
            response[name] = value
        return response
