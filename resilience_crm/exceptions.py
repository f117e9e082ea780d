"""Every error the app raises: one base class, a stable ``code`` and a message for users."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import OperationalError


class ResilienceError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``title`` is the short summary of
    its problem responses (the status's reason phrase when a subclass gives none);
    ``message`` is safe to show users."""

    code = "RESILIENCE_ERROR"
    title = ""
    default_message = "The service is temporarily unavailable. Please try again shortly."
    status = 503

    def __init__(self, message: str | None = None, *, retry_after: float | None = None,
                 circuit: str | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        self.circuit = circuit
        super().__init__(self.message)


class CircuitOpenError(ResilienceError):
    """The circuit rejects calls; never retried."""

    code = "CIRCUIT_OPEN"
    title = "Circuit open"
    default_message = (
        "This part of the service is recovering from errors. Please try again shortly."
    )


class DatabaseCircuitOpen(CircuitOpenError, OperationalError):
    """A statement or a connection refused by the query guard (``PROTECT_QUERIES``): the
    database's circuit is open, so nothing was sent. It is also Django's
    ``OperationalError``, so code written to survive a database that cannot be reached
    (catching ``DatabaseError``) treats it as one, with no wait."""

    default_message = (
        "The database is recovering from errors. Please try again shortly."
    )


class RateLimited(ResilienceError):
    """Too many requests, by our limits or an upstream's: ``violated_policies`` when they
    are known."""

    code = "RATE_LIMITED"
    title = "Too many requests"
    default_message = "Too many requests. Please slow down."
    status = 429

    def __init__(self, message: str | None = None, *, retry_after: float | None = None,
                 circuit: str | None = None, violated_policies: Sequence[str] = ()) -> None:
        super().__init__(message, retry_after=retry_after, circuit=circuit)
        self.violated_policies = tuple(violated_policies)


class OperationTimeout(ResilienceError):
    code = "TIMEOUT"
    title = "Operation timed out"
    default_message = "The operation took too long and was stopped."
    status = 504


class RetriesExhausted(ResilienceError):
    code = "RETRIES_EXHAUSTED"
    title = "Retries exhausted"
    default_message = "The operation kept failing after several attempts."


class StoreUnavailable(ResilienceError):
    """The shared breaker or rate-limit store could not be reached."""

    code = "STORE_UNAVAILABLE"
    title = "Backing store unavailable"
    default_message = "A backing service is unreachable."


class ManualChangeRefused(ResilienceError):
    """An operator's change could be made neither in the shared store nor saved for later."""

    code = "MANUAL_CHANGE_REFUSED"
    title = "Manual change refused"
    default_message = "The change could not be made: the shared store and the database are down."


class DependencyUnavailable(ResilienceError):
    """The database or upstream failed in a way that is not the caller's fault."""

    code = "UNAVAILABLE"
    title = "Dependency unavailable"
    default_message = "A backing service is failing. Please try again shortly."


class QueueUnavailable(ResilienceError):
    """A write could neither be applied nor queued (no durable queue outside the database)."""

    code = "QUEUE_UNAVAILABLE"
    title = "Write queue unavailable"
    default_message = "The write could not be saved or queued. Please try again shortly."


class SpoolUnavailable(Exception):  # noqa: N818  (never reaches a client)
    """Events or metrics could not be put in the shared store's spool: no Redis, or Redis
    failed. They stay in the process's memory."""


class IdempotencyConflict(ResilienceError):
    """The idempotency key was used before with another payload."""

    code = "IDEMPOTENCY_CONFLICT"
    title = "Idempotency key reused"
    default_message = "This Idempotency-Key was already used with a different request."
    status = 422


class IdempotencyInFlight(ResilienceError):
    """A write with this idempotency key is queued or being applied right now."""

    code = "IDEMPOTENCY_IN_FLIGHT"
    title = "Request in flight"
    default_message = "A request with this Idempotency-Key is still being processed."
    status = 409


class InvalidWrite(ResilienceError):
    """A write its row or its model's columns could not hold (a value too long, a number out
    of range): refused before it is applied or queued, the same with the database up or
    down. ``errors`` maps each field to what is wrong with it."""

    code = "INVALID_WRITE"
    default_message = "The write has values the database cannot store."
    status = 400

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {' '.join(messages)}"
                                   for field, messages in errors.items()))
