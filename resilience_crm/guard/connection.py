"""The database wrapper mixin behind the guard's backends: the guard on every connection of
a guarded alias, connecting included, and ``QUERY_TIMEOUT``.

Why a backend and not a ``connection_created`` receiver: Django sends that signal only once
the connection is made, so the first connect of every thread (and, under ASGI, of every
request, each with a wrapper of its own) would reach the database unguarded, and with
psycopg's pool that connect is the very wait the guard exists to skip. A wrapper class runs
its ``__init__`` once for every wrapper Django makes, whatever the thread, pool or
``CONN_MAX_AGE``, and its ``connect`` before every connection (a new one, or one taken from
the pool): both are guarded there, before any socket is opened. Whether an alias is guarded
is read from the settings on each statement, so ``PROTECT_QUERIES`` may change at run time
(``override_settings`` in tests).
"""

from __future__ import annotations

from typing import Any

import resilience_crm.guard.gate as gate
from resilience_crm.conf import settings


class GuardedDatabaseWrapper:
    """Mix in before a backend's ``DatabaseWrapper``: every statement through the circuit
    that ``PROTECT_QUERIES`` names for this alias (:class:`~resilience_crm.guard.gate.
    StatementGuard`, Django's ``execute_wrapper`` hook, installed for good), and every
    connect too, so an open circuit refuses before a connection is attempted."""

    alias: str
    execute_wrappers: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # First in the list: the outermost wrapper, timing everything the others add.
        self.execute_wrappers.insert(0, gate.StatementGuard(self.alias))

    def connect(self) -> None:
        circuit = gate.circuit_for(self.alias)
        if circuit is None:
            super().connect()  # type: ignore[misc]
            return
        gate.guarded(circuit, self._connect_unless_connected)

    def _connect_unless_connected(self) -> None:
        # Taking the permit may have connected already: making the breaker reads its saved
        # settings, and the database store keeps its state, on this very alias.
        if self.connection is None:  # type: ignore[attr-defined]
            super().connect()  # type: ignore[misc]


def query_timeout(alias: str) -> float | None:
    """``QUERY_TIMEOUT`` for ``alias`` in seconds, ``None`` when none is set."""
    timeouts = settings.QUERY_TIMEOUT
    seconds = timeouts.get(alias) if isinstance(timeouts, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds)
    return None

