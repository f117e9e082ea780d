"""One statement, or one connect, through the circuit that guards its database alias.

:func:`circuit_for` says which circuit guards an alias (``PROTECT_QUERIES``), ``None`` when
none does or the guard stands aside (:mod:`resilience_crm.aside`). :func:`enter` takes
a permit from the breaker, with no I/O while its snapshot is fresh; an open or forced-open
circuit refuses with :class:`~resilience_crm.exceptions.DatabaseCircuitOpen` before anything
is sent. :func:`leave` settles the permit: the database's failures (a lost connection, a
timeout, an ``OperationalError`` / ``InterfaceError``, as ``protected`` judges them:
:func:`resilience_crm.failures.database_failed`) count against the circuit; the caller's
errors (``IntegrityError``, ``ProgrammingError``, ``DataError``) count as the database
answering; a statement slower than the circuit's ``slow_call_duration`` counts as slow. The
guard never retries: a statement may be part of a transaction that a retry would not
repeat.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import resilience_crm.aside as aside
from resilience_crm.breakers import machine
from resilience_crm.breakers.breaker import Breaker, Permit
from resilience_crm.conf import settings
from resilience_crm.exceptions import CircuitOpenError, DatabaseCircuitOpen
from resilience_crm.failures import database_failed

#: Where the breakers come from. Imported on first use: the guard's backends import this
#: module, and Django loads a backend while it defines the models (it asks the connection how
#: long a table name may be), before the registry, which needs the models, can be imported.
REGISTRY = "resilience_crm.breakers.registry"

_registry: Any = None


def registry() -> Any:
    global _registry
    if _registry is None:
        _registry = importlib.import_module(REGISTRY)
    return _registry


def circuit_for(alias: str) -> str | None:
    """The circuit that guards ``alias`` here and now; ``None`` when none does or the guard
    stands aside."""
    return None if aside.standing_aside() else settings.guarding(alias)


def enter(circuit: str) -> tuple[Breaker, Permit] | None:
    """The breaker of ``circuit`` and a permit for one statement or connect, or
    :class:`DatabaseCircuitOpen`; ``None`` for the read of the circuit's own saved settings
    while its breaker is being made (it lets that through). The breaker's own store steps
    run with the guard aside: its store may be the guarded database."""
    breakers = _registry or registry()
    breaker = breakers.existing(circuit)
    if breaker is None and circuit in breakers.building_names():
        return None
    token = aside.begin()
    try:
        if breaker is None:
            breaker = breakers.get_breaker(circuit)
        return breaker, breaker.allow()
    except CircuitOpenError as err:
        raise DatabaseCircuitOpen(retry_after=err.retry_after, circuit=circuit) from err
    finally:
        aside.end(token)


def leave(breaker: Breaker, permit: Permit, elapsed: float,
          exc: BaseException | None = None) -> None:
    """Settle ``permit`` after ``elapsed`` seconds: a failure when ``exc`` is the
    dependency's, otherwise a success or slow. Never raises."""
    outcome = machine.FAILURE if exc is not None and is_failure(breaker, exc) else None
    token = aside.begin()
    try:
        breaker.settle(permit, elapsed, outcome)
    finally:
        aside.end(token)


def is_failure(breaker: Breaker, exc: BaseException) -> bool:
    """Whether ``exc`` says the database failed (and the circuit's ``record_exceptions`` /
    ``ignore_exceptions`` agree)."""
    if isinstance(exc, CircuitOpenError):
        return False
    return database_failed(exc) and breaker.is_failure(exc)


def guarded(circuit: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as one call through ``circuit``."""
    entered = enter(circuit)
    if entered is None:
        return fn(*args)
    breaker, permit = entered
    started = time.monotonic()
    try:
        value = fn(*args)
    except BaseException as exc:
        leave(breaker, permit, time.monotonic() - started, exc)
        raise
    leave(breaker, permit, time.monotonic() - started)
    return value


class StatementGuard:
    """The ``execute_wrapper`` (Django's hook around every statement) that a guarded
    connection carries for good: each statement on ``alias`` through its circuit."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"<StatementGuard {self.alias!r}>"

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
        circuit = circuit_for(self.alias)
        if circuit is None:
            return execute(sql, params, many, context)
        return guarded(circuit, execute, sql, params, many, context)
