"""``ResilienceMiddleware``: rate-limit headers on every response that was decided, and the
problem body on a refusal.

:class:`~resilience_crm.throttling.TierRateThrottle` decides inside the DRF view and leaves
the :class:`~resilience_crm.ratelimit.gcra.Decision` on the request; this middleware turns it into
``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft),
``X-RateLimit-Limit/Remaining/Reset`` (the tightest policy; reset in seconds from now) and,
on a refusal, ``Retry-After`` and an ``application/problem+json`` body with
``code: "RATE_LIMITED"`` and ``violated_policies``. Sync and async capable.

Before the view, it refuses a request from an address that has spent its ``AUTH_FAILURES``
(:mod:`resilience_crm.ratelimit.auth_failures`) with the same ``429``, before anything is looked up;
after it, it counts a ``401`` to a request with credentials as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

from resilience_crm.exceptions import RateLimited, ResilienceError, StoreUnavailable
from resilience_crm.problems import error_response, retry_after_header
from resilience_crm.ratelimit import auth_failures
from resilience_crm.ratelimit.gcra import Decision

#: The request attribute the throttle leaves its decision in.
DECISION_ATTRIBUTE = "resilience_ratelimit"


def remember(request: Any, decision: Decision) -> None:
    """Leave ``decision`` on the Django request behind ``request`` (DRF's or Django's)."""
    setattr(getattr(request, "_request", request), DECISION_ATTRIBUTE, decision)


def decision_of(request: HttpRequest) -> Decision | None:
    return getattr(request, DECISION_ATTRIBUTE, None)


def _seconds(value: float) -> str:
    return str(int(value) if float(value).is_integer() else value)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The rate-limit headers for ``decision``."""
    headers: dict[str, str] = {}
    tightest = decision.tightest()
    if tightest is not None:
        headers["RateLimit-Policy"] = ", ".join(
            f'"{p.policy}";q={p.limit};w={_seconds(p.window)}' for p in decision.policies)
        headers["RateLimit"] = ", ".join(
            f'"{p.policy}";r={p.remaining};t={math.ceil(p.reset)}' for p in decision.policies)
        headers["X-RateLimit-Limit"] = str(tightest.limit)
        headers["X-RateLimit-Remaining"] = str(tightest.remaining)
        headers["X-RateLimit-Reset"] = str(math.ceil(tightest.reset))
    if not decision.allowed:
        headers["Retry-After"] = str(retry_after_header(decision.retry_after))
    return headers


def refusal(decision: Decision) -> HttpResponseBase:
    """The problem response for a refused request, with the decision's headers."""
    wait = retry_after_header(decision.retry_after)
    error: ResilienceError
    if decision.source == "unavailable":
        error = StoreUnavailable(
            f"Requests of this kind are refused while the rate-limit store is unreachable."
            f" Try again in {wait} s.", retry_after=decision.retry_after)
    else:
        error = RateLimited(
            f"{RateLimited.default_message} Try again in {wait} s.",
            retry_after=decision.retry_after,
            violated_policies=[p.policy for p in decision.policies
                               if not p.conform and not p.shadow])
    return error_response(error, rate_limit_headers(decision))


def apply(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """``response`` with the headers of the request's decision, or the problem response."""
    decision = decision_of(request)
    if decision is None:
        return response
    if not decision.allowed and response.status_code in (429, 503):
        response = refusal(decision)
    for name, value in rate_limit_headers(decision).items():
        response[name] = value
    return response


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
        locked_out = auth_failures.refused(request)
        if locked_out is not None:
            return refusal(locked_out)
        response = self.get_response(request)
        auth_failures.observe(request, response.status_code)
        return apply(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        locked_out = await sync_to_async(auth_failures.refused)(request)
        if locked_out is not None:
            return refusal(locked_out)
        response = await self.get_response(request)
        await sync_to_async(auth_failures.observe)(request, response.status_code)
        return apply(request, response)

