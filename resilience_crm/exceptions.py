"""Every error the app raises: one base class, a stable ``code`` and a message for users."""

from __future__ import annotations


class ResilienceError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``message`` is safe to show users."""

    code = "RESILIENCE_ERROR"
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
    default_message = (
        "This part of the service is recovering from errors. Please try again shortly."
    )


class RateLimited(ResilienceError):
    code = "RATE_LIMITED"
    default_message = "Too many requests. Please slow down."
    status = 429


class OperationTimeout(ResilienceError):
    code = "TIMEOUT"
    default_message = "The operation took too long and was stopped."
    status = 504


class RetriesExhausted(ResilienceError):
    code = "RETRIES_EXHAUSTED"
    default_message = "The operation kept failing after several attempts."


class StoreUnavailable(ResilienceError):
    """The shared breaker or rate-limit store could not be reached."""

    code = "STORE_UNAVAILABLE"
    default_message = "A backing service is unreachable."


class ConfigurationError(ResilienceError):
    code = "CONFIGURATION_ERROR"
    default_message = "The resilience settings are invalid."
    status = 500


class ManualChangeRefused(ResilienceError):
    """An operator's change could be made neither in the shared store nor saved for later."""

    code = "MANUAL_CHANGE_REFUSED"
    default_message = "The change could not be made: the shared store and the database are down."


class DependencyUnavailable(ResilienceError):
    """The database or upstream failed in a way that is not the caller's fault."""

    code = "UNAVAILABLE"
    default_message = "A backing service is failing. Please try again shortly."


class QueueUnavailable(ResilienceError):
    """A write could neither be applied nor queued (no durable queue outside the database)."""

    code = "QUEUE_UNAVAILABLE"
    default_message = "The write could not be saved or queued. Please try again shortly."


class SpoolUnavailable(Exception):  # noqa: N818  (never reaches a client)
    """Events or metrics could not be put in the shared store's spool: no Redis, or Redis
    failed. They stay in the process's memory."""


class IdempotencyConflict(ResilienceError):
    """The idempotency key was used before with another payload."""

    code = "IDEMPOTENCY_CONFLICT"
    default_message = "This Idempotency-Key was already used with a different request."
    status = 422


class IdempotencyInFlight(ResilienceError):
    """A write with this idempotency key is queued or being applied right now."""

    code = "IDEMPOTENCY_IN_FLIGHT"
    default_message = "A request with this Idempotency-Key is still being processed."
    status = 409
