"""DRF integration: :class:`TierRateThrottle` and the :func:`bulk` helper.

Add ``"resilience_crm.throttling.TierRateThrottle"`` to ``DEFAULT_THROTTLE_CLASSES`` and
``"resilience_crm.middleware.ResilienceMiddleware"`` to ``MIDDLEWARE``. The throttle runs after
DRF's authentication, so users are limited by user id and tier, anonymous clients by IP.

The op class comes from the HTTP method (GET, HEAD and OPTIONS read, the rest write) unless
the view says otherwise: ``resilience_operation = "rpc"`` on the view, a dict
``{action: op_class}`` there, or ``@action(..., resilience_operation="auth")`` on one action.
The endpoint is the resolved URL name, never the path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework.exceptions import APIException
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import BaseThrottle

from resilience_crm.constants import OP_CLASSES
from resilience_crm.exceptions import ResilienceError, StoreUnavailable
from resilience_crm.ratelimit import auth_failures, headers, limiter, principals
from resilience_crm.ratelimit.gcra import Decision
from resilience_crm.ratelimit.principals import Principal

logger = logging.getLogger("resilience_crm.throttling")


class RateLimitUnavailable(APIException):
    """The rate-limit store is unreachable and this op class fails closed (``FAIL_OPEN``)."""

    status_code = 503
    default_code = StoreUnavailable.code
    default_detail = "Rate limiting is unavailable; try again shortly."

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.wait = wait


def operation(request: Any, view: Any) -> str:
    """The op class of ``request`` to ``view``."""
    op_class = getattr(view, "resilience_operation", None)
    if isinstance(op_class, dict):
        op_class = op_class.get(getattr(view, "action", None))
    if op_class is None:
        # The Django request's own attribute: DRF's Request forwards it, but slowly.
        method = getattr(request, "_request", request).method
        return "read" if method in SAFE_METHODS else "write"
    if op_class not in OP_CLASSES:
        raise ImproperlyConfigured(
            f"{type(view).__name__}.resilience_operation is {op_class!r}; use one of"
            f" {', '.join(OP_CLASSES)}.")
    return str(op_class)


def endpoint(request: Any) -> str | None:
    """The resolved URL name (with namespaces), or ``None`` for an unnamed URL."""
    match = getattr(getattr(request, "_request", request), "resolver_match", None)
    return match.view_name if match is not None and match.url_name else None


class TierRateThrottle(BaseThrottle):
    """Tiered GCRA limits per op class and endpoint, decided in one store call."""

    decision: Decision | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        decision = limiter.check(request, operation(request, view), endpoint(request),
                                 checking=auth_failures.deferred(request))
        if getattr(request, "auth", None) is not None:  # an authenticator took credentials
            auth_failures.passed(request)
        self.decision = decision
        headers.attach(request, decision)
        if decision.source == "unavailable":
            raise RateLimitUnavailable(decision.retry_after)
        return decision.allowed

    def wait(self) -> float | None:
        return self.decision.retry_after if self.decision is not None else None


def decides_auth_failures(view: Any) -> bool:
    """Whether ``view`` (a URL's view function) is a DRF view whose throttles include
    :class:`TierRateThrottle`, which checks an address's ``AUTH_FAILURES`` when the middleware
    leaves it the check."""
    from rest_framework.views import APIView  # DRF imports this module while it builds APIView

    cls = getattr(view, "cls", None)
    if cls is None or cls.get_throttles is not APIView.get_throttles:
        return False
    throttles = getattr(view, "initkwargs", {}).get("throttle_classes", cls.throttle_classes)
    return any(isinstance(throttle, type) and issubclass(throttle, TierRateThrottle)
               for throttle in throttles)


@dataclass(frozen=True)
class RowResult:
    """What became of one row: ``status`` is ``"done"``, ``"failed"`` or ``"rate_limited"``.
    A failed row has a stable ``code`` and an ``error`` safe to show: a
    :class:`ResilienceError`'s own, else ``ROW_FAILED`` (the detail goes to the log)."""

    index: int
    status: str
    value: Any = None
    error: str = ""
    retry_after: float = 0.0
    code: str = ""


#: ``code`` and ``error`` of a row whose handler raised something other than a
#: :class:`ResilienceError`.
ROW_FAILED = "ROW_FAILED"
ROW_FAILED_MESSAGE = "The row could not be saved."


def bulk(who: Any, rows: Iterable[Any], handler: Callable[[Any], Any], *,
         op_class: str = "write", endpoint: str | None = None, max_wait: float = 30.0,
         sleep: Callable[[float], Any] = time.sleep) -> list[RowResult]:
    """Run ``handler(row)`` for each row, spending one request of ``who``'s budget per row.

    ``who`` is a request or a :class:`~resilience_crm.ratelimit.principals.Principal`. When the
    budget is
    short the helper waits the decision's ``Retry-After`` and tries again, up to ``max_wait``
    seconds in all; rows it cannot afford after that are reported ``rate_limited`` (with their
    ``retry_after``) and a handler's exception marks its row ``failed``: one bad row or an
    exhausted budget never fails the whole batch.
    """
    principal = who if isinstance(who, Principal) else principals.principal(who)
    waited = 0.0
    results: list[RowResult] = []
    for index, row in enumerate(rows):
        decision = limiter.decide(principal, op_class, endpoint)
        while not decision.allowed and waited + decision.retry_after <= max_wait:
            sleep(decision.retry_after)
            waited += decision.retry_after
            decision = limiter.decide(principal, op_class, endpoint)
        if not decision.allowed:
            results.append(RowResult(index, "rate_limited", retry_after=decision.retry_after))
            continue
        try:
            value = handler(row)
        except ResilienceError as err:  # one bad row must not fail the batch
            results.append(RowResult(index, "failed", error=err.message, code=err.code))
        except Exception:
            logger.exception("Row %s failed", index)
            results.append(RowResult(index, "failed", error=ROW_FAILED_MESSAGE, code=ROW_FAILED))
        else:
            results.append(RowResult(index, "done", value))
    return results
