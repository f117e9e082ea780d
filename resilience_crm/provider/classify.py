"""One classifier for every error a protected call can raise.

:func:`classify` says whether an error is worth retrying, whether it counts against the
circuit (the dependency failed, rather than the caller's request), and which
:class:`~resilience_crm.exceptions.ResilienceError` stands for it when it reaches a client
(:func:`error_for`; :func:`rebuild` makes the same error again from what another process
published). It looks at classes and SQLSTATEs, never at message text, so it needs no driver
imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.db import DatabaseError, DataError, IntegrityError
from django.utils import timezone

from resilience_crm.exceptions import (
    CircuitOpenError,
    DependencyUnavailable,
    OperationTimeout,
    RateLimited,
    ResilienceError,
    RetriesExhausted,
)
from resilience_crm.failures import chain_names, class_names, database_failed

#: SQLSTATEs of errors that a new attempt can get past: serialization failure, deadlock.
RETRYABLE_SQLSTATES = ("40001", "40P01")
#: SQLSTATE of a statement cancelled by ``statement_timeout``.
QUERY_CANCELED = "57014"
#: SQLSTATE classes of a connection that broke or a server that is going away.
CONNECTION_SQLSTATE_PREFIXES = ("08", "57P")
#: Driver errors that mean a wait for a connection already used up its time.
TIMEOUT_CLASS_NAMES = frozenset({"PoolTimeout", "ConnectionTimeout"})
#: Upstream HTTP statuses worth another attempt.
RETRYABLE_STATUSES = (429, 502, 503, 504)
#: Client-error statuses that a later attempt may get past: timeout, conflict, too early,
#: rate limited.
TRANSIENT_CLIENT_STATUSES = (408, 409, 425, 429)


class Classification(NamedTuple):
    #: Another attempt may succeed.
    retryable: bool
    #: The dependency failed (counts against the circuit); ``False`` for the caller's errors.
    dependency: bool
    #: What a client is told, or ``None`` when the original error should propagate.
    error: type[ResilienceError] | None
    #: Seconds the dependency asked us to wait (``Retry-After``), when it said.
    retry_after: float | None = None


def classify(exc: BaseException) -> Classification:
    if isinstance(exc, CircuitOpenError):
        return Classification(False, False, CircuitOpenError, exc.retry_after)
    if isinstance(exc, ResilienceError):
        # 422/409/429 are about the request; 5xx mean a dependency failed.
        return Classification(False, exc.status >= 500, type(exc), exc.retry_after)
    status = _http_status(exc)
    if status is not None:
        return _classify_status(exc, status)
    if isinstance(exc, DatabaseError) or "DatabaseError" in class_names(exc):
        return _classify_database(exc)
    if isinstance(exc, TimeoutError):
        return Classification(False, True, OperationTimeout)
    if isinstance(exc, ConnectionError) or _is_redis_connection_error(exc):
        return Classification(True, True, DependencyUnavailable)
    return Classification(False, False, None)


def error_for(exc: BaseException, kind: Classification, circuit: str, *,
              retried: bool) -> ResilienceError | None:
    """What a call that failed with ``exc`` (classified as ``kind``) raises, chained from
    ``exc``; ``None`` when ``exc`` itself propagates (it is the library's own, or the
    caller's). After retries it is :class:`RetriesExhausted`."""
    if isinstance(exc, ResilienceError) or kind.error is None:
        return None
    if retried:
        return RetriesExhausted(retry_after=kind.retry_after, circuit=circuit)
    return kind.error(retry_after=kind.retry_after, circuit=circuit)


def rebuild(error: Mapping[str, Any], circuit: str) -> ResilienceError:
    """The error another process met (``{"code", "message", "retry_after"}``, as
    ``ReadCache.publish_error`` shares it), as the same class."""
    cls = _ERROR_CLASSES.get(str(error.get("code")), ResilienceError)
    if cls is CircuitOpenError:
        return CircuitOpenError(retry_after=error.get("retry_after"), circuit=circuit)
    return cls(error.get("message"), retry_after=error.get("retry_after"), circuit=circuit)


def is_permanent(exc: BaseException) -> bool:
    """Whether no later attempt can succeed because the write itself is wrong: the database
    refused its data (``DataError``, ``IntegrityError``), it failed validation (Django's
    ``ValidationError``), or an error with a 4xx status said so (DRF's ``ValidationError``,
    an upstream's 400, ``InvalidWrite``); 408, 409, 425 and 429 are not permanent."""
    if isinstance(exc, DataError | IntegrityError | ValidationError):
        return True
    status = exc.status if isinstance(exc, ResilienceError) else _http_status(exc)
    return status is not None and 400 <= status < 500 and status not in TRANSIENT_CLIENT_STATUSES


def is_conflict(exc: BaseException) -> bool:
    """A serialization failure or deadlock: the transaction was rolled back, so running it
    again cannot apply anything twice."""
    return _sqlstate(exc) in RETRYABLE_SQLSTATES


def _classify_database(exc: BaseException) -> Classification:
    """Django's wrapped errors and the DB-API driver's own (psycopg's), by SQLSTATE and by
    the DB-API class names, so no driver needs importing."""
    sqlstate = _sqlstate(exc)
    if sqlstate in RETRYABLE_SQLSTATES:
        return Classification(True, True, DependencyUnavailable)
    if sqlstate == QUERY_CANCELED:
        return Classification(False, True, OperationTimeout)
    if database_failed(exc):
        if chain_names(exc) & TIMEOUT_CLASS_NAMES:  # the pool's or libpq's connect wait ran out
            return Classification(False, True, OperationTimeout)
        if sqlstate is None or sqlstate.startswith(CONNECTION_SQLSTATE_PREFIXES):
            return Classification(True, True, DependencyUnavailable)
        return Classification(False, True, DependencyUnavailable)
    # IntegrityError, DataError, ProgrammingError...: the database answered; the caller erred.
    return Classification(False, False, None)


def _classify_status(exc: BaseException, status: int) -> Classification:
    retry_after = retry_after_seconds(_headers(exc).get("Retry-After"))
    if status == 429:
        return Classification(True, True, RateLimited, retry_after)
    if status in RETRYABLE_STATUSES:
        return Classification(True, True, DependencyUnavailable, retry_after)
    if status >= 500:
        return Classification(False, True, DependencyUnavailable)
    return Classification(False, False, None)


def _sqlstate(exc: BaseException) -> str | None:
    for err in (exc, exc.__cause__):
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _http_status(exc: BaseException) -> int | None:
    """The status of an upstream HTTP error (requests' ``HTTPError``, httpx's
    ``HTTPStatusError`` or anything with ``status_code``)."""
    for holder in (exc, getattr(exc, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _headers(exc: BaseException) -> Any:
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            return headers
    return {}


def _is_redis_connection_error(exc: BaseException) -> bool:
    names = class_names(exc)
    module = type(exc).__module__
    return module.startswith(("redis", "django_redis")) and bool(
        names & {"ConnectionError", "TimeoutError", "ConnectionInterrupted"})


def retry_after_seconds(value: Any) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if value is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = parsedate_to_datetime(str(value))
        return max(0.0, (when - timezone.now()).total_seconds())
    return None


def _subclasses(cls: type[ResilienceError]) -> list[type[ResilienceError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


#: The class each code stands for: the first (most general) class that has it, so
#: ``CIRCUIT_OPEN`` is :class:`CircuitOpenError`, not its database subclass.
_ERROR_CLASSES: dict[str, type[ResilienceError]] = {}
for _cls in _subclasses(ResilienceError):
    _ERROR_CLASSES.setdefault(_cls.code, _cls)
