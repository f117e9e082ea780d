"""The answer to a :class:`~resilience_crm.exceptions.ResilienceError` that reached a plain
Django view: the app's problem+json (:func:`~resilience_crm.problems.error_response`, the one
DRF's handler gives too), or, in the admin, a short HTML page that says what is down and when
it will be tried again; both with the error's status and ``Retry-After``.

:class:`~resilience_crm.middleware.ResilienceMiddleware` gives it from ``process_exception``.
The page is rendered without the request's context processors: they would load the session
and the user from the database that is down.
"""

from __future__ import annotations

from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone

from resilience_crm.exceptions import ResilienceError
from resilience_crm.problems import error_response, retry_after_header

#: The admin's page for a refused request.
ADMIN_TEMPLATE = "admin/resilience_crm/unavailable.html"


def answer(request: HttpRequest, exc: ResilienceError) -> HttpResponse:
    """The admin's page for a request to the admin, the problem response otherwise."""
    match = getattr(request, "resolver_match", None)
    if match is not None and "admin" in match.app_names:
        return admin_page(exc)
    return error_response(exc)


def admin_page(exc: ResilienceError) -> HttpResponse:
    """A short page: what is down (the circuit), what happened, and when it is tried again."""
    seconds = retry_after_header(exc.retry_after) if exc.retry_after is not None else None
    context = {
        "circuit": exc.circuit,
        "message": exc.message,
        "code": exc.code,
        "status": exc.status,
        "retry_after": seconds,
        "retry_at": timezone.now() + timedelta(seconds=seconds) if seconds else None,
    }
    response = HttpResponse(render_to_string(ADMIN_TEMPLATE, context), status=exc.status)
    if seconds is not None or exc.status in (429, 503):
        response["Retry-After"] = str(seconds or 1)
    return response
