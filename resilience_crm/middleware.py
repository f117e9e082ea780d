"""``ResilienceMiddleware``: rate-limit headers on every response that was decided, and the
problem body on a refusal.

:class:`~resilience_crm.throttling.TierRateThrottle` decides inside the DRF view and leaves
its decision on the request (``request.resilience_ratelimit``, see
:mod:`resilience_crm.ratelimit.headers`); this middleware turns it into the rate-limit headers
and, on a refusal, ``Retry-After`` and an ``application/problem+json`` body with
``code: "RATE_LIMITED"`` and ``violated_policies``. Sync and async capable.

Before the view (``process_view``), it refuses a request from an address that has spent its
``AUTH_FAILURES`` (:mod:`resilience_crm.ratelimit.auth_failures`) with the same ``429``, before
anything is looked up, or leaves that to the view's throttle for credentials that passed
before; after the view, it counts a ``401`` to a request with credentials as a failure.

A :class:`~resilience_crm.exceptions.ResilienceError` that a plain Django view raises (the
query guard's :class:`~resilience_crm.exceptions.DatabaseCircuitOpen` from any ORM call, say)
becomes the same answer DRF's handler gives: ``process_exception`` returns the problem
response, or the admin's short 503 page (:mod:`resilience_crm.answers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

from resilience_crm.answers import answer
from resilience_crm.exceptions import ResilienceError
from resilience_crm.ratelimit import auth_failures, headers
from resilience_crm.ratelimit.gcra import Decision
from resilience_crm.ratelimit.headers import refusal
from resilience_crm.throttling import decides_auth_failures


class ResilienceMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        response = self.get_response(request)
        return _answer(request, response, auth_failures.observe(request, response.status_code))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        spent = await sync_to_async(auth_failures.observe)(request, response.status_code)
        return _answer(request, response, spent)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any],
                     view_args: Any, view_kwargs: Any) -> HttpResponseBase | None:
        """Refuse a request from an address that spent its ``AUTH_FAILURES``, before the view
        looks anything up; or leave that to the view's ``TierRateThrottle``, for credentials
        that passed before (see :mod:`resilience_crm.ratelimit.auth_failures`)."""
        if auth_failures.deferrable(request) and decides_auth_failures(view_func):
            auth_failures.defer(request)
            return None
        locked_out = auth_failures.refused(request)
        return None if locked_out is None else refusal(locked_out)

    def process_exception(self, request: HttpRequest,
                          exception: Exception) -> HttpResponseBase | None:
        """A :class:`ResilienceError` from the view, as the app's answer; anything else is
        left to Django."""
        if not isinstance(exception, ResilienceError):
            return None
        return answer(request, exception)


def _answer(request: HttpRequest, response: HttpResponseBase,
            spent: Decision | None) -> HttpResponseBase:
    """``response`` with the rate-limit headers of the request's decision; a ``401`` that
    spent one of the address's ``AUTH_FAILURES`` says how many are left, when no throttle
    decided the request (DRF authenticates before it throttles)."""
    if spent is not None and headers.decision_of(request) is None:
        for name, value in headers.headers(spent).items():
            if name != "Retry-After":
                response[name] = value
    return headers.apply(request, response)
