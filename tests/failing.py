"""A dependency that fails, and tripping a breaker with it: shared by the tests."""

from __future__ import annotations

import pytest

from resilience_crm.exceptions import CircuitOpenError


def boom():
    raise ConnectionError("the backend is down")


def trip(breaker) -> None:
    """Fail calls until the circuit opens; the caller sees only the backend's own errors,
    then the open circuit's."""
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(boom)
