"""A dependency that fails, and tripping a breaker with it: shared by the tests and the
benchmarks."""

from __future__ import annotations

import contextlib

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


def churn(breaker) -> None:
    """Two transitions and a few counted calls, on a breaker that opens after two failures."""
    for _ in range(2):
        with contextlib.suppress(ConnectionError):
            breaker.call(boom)
    with contextlib.suppress(CircuitOpenError):
        breaker.call(boom)
    breaker.reset(reason="again")
    for _ in range(5):
        breaker.call(lambda: "ok")
