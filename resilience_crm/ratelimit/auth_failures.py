"""Failed authentications per client address, and refusing an address that spent them.

DRF authenticates before any throttle runs, so a flood of made-up tokens costs one lookup
each and is never limited. ``AUTH_FAILURES`` (``"30/min"`` by default, ``None`` turns it off)
is a GCRA rate of failures per client address, grouped as the limiter groups addresses
(:func:`resilience_crm.ratelimit.principals.client_ip`). A failure is a ``401`` to a request that
sent
``Authorization`` (whichever authenticator refused it) or a failed password login
(Django's ``user_login_failed``, which ``authenticate()`` sends: the demo's token endpoint,
the admin's login). Successes are never counted.

:class:`~resilience_crm.middleware.ResilienceMiddleware` asks :func:`refused` before the
view runs, for requests that could authenticate (``Authorization`` sent, or an unsafe
method): once the address has no failures left, it answers ``429`` with ``Retry-After``
without any lookup. The count lives in the limiter's store (Redis: one round trip to peek,
one script to count; keys expire when their bucket is full again); while that store is
unreachable each process counts on its own, at its share (limit / ``EXPECTED_PROCESSES``).

Credentials that passed authentication in this process before (:func:`passed`) spare no
lookup by being refused early: for them, when the view's throttles include
:class:`~resilience_crm.throttling.TierRateThrottle` and the limiter's store checks in its
decision's step (Redis, memory), the middleware leaves the check to the throttle
(:func:`defer`), which makes it in the same store step as its own decision
(:func:`deferred`; one round trip, not two). The address is checked afresh either way: what
this process remembers is only that a credential is not made up, never that an address may
pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from resilience_crm.conf import settings
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.gcra import Decision, Limit
from resilience_crm.ratelimit.principals import client_ip
from resilience_crm.ratelimit.stores.base import BaseLimiterStore

#: The op class the decisions are reported under (headers and problem bodies name the policy).
OP_CLASS = "auth"
#: Methods that send no credentials in their body.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: The Django request attribute that says the address is for the throttle to check.
DEFERRED = "_resilience_auth_failures_deferred"
#: How many credentials :func:`passed` remembers; past it, it forgets them all at once.
MAX_PASSED = 10_000

#: Hashes (this process's ``hash()``, so nothing secret is kept) of the ``Authorization``
#: values that passed authentication here.
_passed: set[int] = set()


def _limits(address: str) -> Callable[[BaseLimiterStore, float], tuple[Limit, ...]]:
    """A ``limits_of(store, scale)`` for :func:`limiter.decide_limits`: the failure limit of
    ``address``, or none while ``AUTH_FAILURES`` is off."""

    def limits_of(store: BaseLimiterStore, scale: float) -> tuple[Limit, ...]:
        rates = limiter.rates(settings.AUTH_FAILURES) if settings.AUTH_FAILURES else ()
        found = []
        for rate in rates:
            window = int(rate.period) if rate.period.is_integer() else rate.period
            found.append(Limit(key=store.key(f"ip:{address}", f"authfail:{window}"),
                               policy=f"auth_failures.{window}s",
                               limit=max(1, int(rate.limit * scale)), period=rate.period))
        return tuple(found)

    return limits_of


def attempts_authentication(request: HttpRequest) -> bool:
    """Whether ``request`` could make an authenticator look something up."""
    return "HTTP_AUTHORIZATION" in request.META or request.method not in SAFE_METHODS


def refused(request: HttpRequest) -> Decision | None:
    """The refusal for ``request`` when its address has no failures left, else ``None``."""
    if not settings.AUTH_FAILURES or not attempts_authentication(request):
        return None
    try:
        decision = limiter.decide_limits(_limits(client_ip(request)), op_class=OP_CLASS,
                                         charge=False)
    except NotImplementedError:
        return None  # a custom store that cannot peek (check W023): never a 500
    return None if decision.allowed else decision


def deferrable(request: HttpRequest) -> bool:
    """Whether ``request``'s credentials passed authentication in this process before, so
    refusing it before its lookup spares nothing, and the limiter's store checks the address
    in the decision's own step (while ``AUTH_FAILURES`` is on): else the check stays first."""
    credentials = request.META.get("HTTP_AUTHORIZATION")
    return bool(settings.AUTH_FAILURES) and credentials is not None and (
        hash(credentials) in _passed) and limiter.get_store().checks_in_step


def defer(request: HttpRequest) -> None:
    """Leave the check of ``request``'s address to the throttle's decision."""
    setattr(request, DEFERRED, True)


def deferred(request: Any) -> limiter.Check | None:
    """The check of the address that the middleware left to the throttle deciding
    ``request`` (a Django or DRF request), once; ``None`` when it was not left."""
    request = getattr(request, "_request", request)
    if not request.__dict__.pop(DEFERRED, False):
        return None
    return limiter.Check(_limits(client_ip(request)), OP_CLASS)


def passed(request: Any) -> None:
    """Remember that the credentials ``request`` sent passed authentication (the caller
    knows they did: DRF's ``request.auth`` is set)."""
    credentials = getattr(request, "_request", request).META.get("HTTP_AUTHORIZATION")
    if credentials is not None and settings.AUTH_FAILURES:
        if len(_passed) >= MAX_PASSED:
            _passed.clear()
        _passed.add(hash(credentials))


def forget() -> None:
    """Forget every credential :func:`passed` remembers."""
    _passed.clear()


def failed(request: Any) -> Decision | None:
    """Count one failed authentication of ``request``'s address (a Django or DRF request);
    the decision says how many failures the address has left."""
    if not settings.AUTH_FAILURES:
        return None
    request = getattr(request, "_request", request)
    return limiter.decide_limits(_limits(client_ip(request)), op_class=OP_CLASS)


def observe(request: HttpRequest, status: int) -> Decision | None:
    """Count the answer to ``request`` as a failure if an authenticator refused it."""
    if status == 401 and "HTTP_AUTHORIZATION" in request.META:
        _passed.discard(hash(request.META["HTTP_AUTHORIZATION"]))
        return failed(request)
    return None
