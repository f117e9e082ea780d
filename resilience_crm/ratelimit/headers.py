"""A rate-limit decision on the wire, and how it travels from the throttle to the response.

:class:`~resilience_crm.throttling.TierRateThrottle` decides inside the DRF view and leaves
its :class:`~resilience_crm.ratelimit.gcra.Decision` on the Django request as
``request.resilience_ratelimit`` (:func:`attach`): a public attribute, documented in
docs/ratelimiting.md, that views and logging may read too. Everything that answers the
request reads it back with :func:`decision_of`:
:class:`~resilience_crm.middleware.ResilienceMiddleware` adds the headers to every response,
and :func:`resilience_crm.drf.exception_handler` answers a refusal with the same problem body,
so a ``429`` keeps its shape without the middleware (system check ``resilience_crm.W024``
says when neither is installed).

The headers are ``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft),
``X-RateLimit-Limit/Remaining/Reset`` (the tightest policy; reset in seconds from now) and,
on a refusal, ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from resilience_crm.exceptions import RateLimited, ResilienceError, StoreUnavailable
from resilience_crm.problems import error_response, retry_after_header
from resilience_crm.ratelimit.gcra import Decision

#: The Django request attribute that holds the throttle's decision.
ATTRIBUTE = "resilience_ratelimit"


def attach(request: Any, decision: Decision) -> None:
    """Leave ``decision`` on the Django request behind ``request`` (DRF's or Django's)."""
    setattr(getattr(request, "_request", request), ATTRIBUTE, decision)


def decision_of(request: Any) -> Decision | None:
    """The decision the throttle reached for ``request`` (DRF's or Django's), if any."""
    return getattr(getattr(request, "_request", request), ATTRIBUTE, None)


def _seconds(value: float) -> str:
    return str(int(value) if float(value).is_integer() else value)


def headers(decision: Decision) -> dict[str, str]:
    """The rate-limit headers for ``decision``."""
    found: dict[str, str] = {}
    tightest = decision.tightest()
    if tightest is not None:
        found["RateLimit-Policy"] = ", ".join(
            f'"{p.policy}";q={p.limit};w={_seconds(p.window)}' for p in decision.policies)
        found["RateLimit"] = ", ".join(
            f'"{p.policy}";r={p.remaining};t={math.ceil(p.reset)}' for p in decision.policies)
        found["X-RateLimit-Limit"] = str(tightest.limit)
        found["X-RateLimit-Remaining"] = str(tightest.remaining)
        found["X-RateLimit-Reset"] = str(math.ceil(tightest.reset))
    if not decision.allowed:
        found["Retry-After"] = str(retry_after_header(decision.retry_after))
    return found


def refusal(decision: Decision) -> HttpResponseBase:
    """The problem response for a refused request, with the decision's headers: ``429
    RATE_LIMITED`` with ``violated_policies``, or ``503`` while the store is unreachable and
    the op class fails closed."""
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
    return error_response(error, headers(decision))


def apply(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """``response`` with the headers of the request's decision, or the problem response."""
    decision = decision_of(request)
    if decision is None:
        return response
    if not decision.allowed and response.status_code in (429, 503):
        response = refusal(decision)
    for name, value in headers(decision).items():
        response[name] = value
    return response
