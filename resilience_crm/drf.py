"""Django REST framework glue: problem responses for every ``ResilienceError`` (and, with
:func:`problem_exception_handler`, for every error), and the fallback label on responses
served from cache.

    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "resilience_crm.drf.exception_handler"}

and mix :class:`FallbackHeadersMixin` into views that call ``protected``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.http import HttpResponseBase
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from resilience_crm.exceptions import ResilienceError
from resilience_crm.problems import CONTENT_TYPE, error_response, problem_response
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


#: The ``code`` of a 400 for fields that failed validation; their messages are in ``errors``.
INVALID = "INVALID"


def problem_exception_handler(exc: Exception,
                              context: dict[str, Any]) -> HttpResponseBase | None:
    """:func:`exception_handler`, with every other error DRF answers (400, 401, 403, 404, 405,
    406, 415, ...) as ``application/problem+json`` too: one shape for every error of an API.

    ``code`` is DRF's own code in upper case (``NOT_AUTHENTICATED``, ``PERMISSION_DENIED``,
    ``NOT_FOUND``, ``METHOD_NOT_ALLOWED``, ``UNSUPPORTED_MEDIA_TYPE``, ``PARSE_ERROR``...); a
    validation error is ``INVALID``, with DRF's field messages in ``errors``. The headers DRF
    sets (``WWW-Authenticate``, ``Allow``) and the request's rate-limit headers are kept.

        REST_FRAMEWORK = {"EXCEPTION_HANDLER": "resilience_crm.drf.problem_exception_handler"}
    """
    response = exception_handler(exc, context)
    if response is None or response.get("Content-Type") == CONTENT_TYPE:
        return response
    data = getattr(response, "data", None)
    status = response.status_code
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        code, detail, extra["errors"] = INVALID, "The request has invalid values.", data
    else:
        given = data.get("detail") if isinstance(data, dict) else None
        code = str(getattr(given, "code", None) or _default_code(exc, status)).upper()
        detail = str(given or HTTPStatus(status).phrase)
    kept = {name: response[name] for name in KEPT_HEADERS if response.has_header(name)}
    wait = kept.pop("Retry-After", None)  # another throttle's, say: kept as it is
    request = context.get("request")
    decision = decision_of(request) if request is not None else None
    if decision is not None:
        kept |= headers(decision)
    return problem_response(status, code, HTTPStatus(status).phrase, detail, headers=kept,
                            retry_after=float(wait) if wait is not None else None, **extra)


#: Headers of DRF's own answer that the problem answer keeps.
KEPT_HEADERS = ("WWW-Authenticate", "Allow", "Retry-After")


def _default_code(exc: Exception, status: int) -> str:
    if isinstance(exc, APIException):
        return str(exc.default_code)
    return {404: "not_found", 403: "permission_denied"}.get(status, "error")


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
