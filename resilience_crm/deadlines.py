"""A call's time budget, and the database-side limit derived from it.

The budget is the circuit's ``call_timeout``. On PostgreSQL the time left becomes
``SET LOCAL statement_timeout`` inside the call's transaction, so a slow query is stopped by
the server. A connection that cannot be made, or a pool that has nothing to hand out, is
bounded by the connection's own settings (``connect_timeout``, the pool's ``timeout``,
TCP keepalives and ``tcp_user_timeout``): see docs/provider.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connections

#: The shortest statement_timeout set, in milliseconds (0 would mean "no limit").
MIN_STATEMENT_TIMEOUT_MS = 1


class Deadline:
    def __init__(self, budget: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._monotonic = monotonic
        self.started = monotonic()
        self.expires = self.started + budget

    def remaining(self) -> float:
        return max(0.0, self.expires - self._monotonic())

    def elapsed(self) -> float:
        return self._monotonic() - self.started

    @property
    def expired(self) -> bool:
        return self._monotonic() >= self.expires


def set_statement_timeout(using: str, seconds: float) -> str | None:
    """Limit every statement in the current transaction on ``using`` to ``seconds``
    (PostgreSQL only) and return the limit it replaced; ``None`` elsewhere. Call it inside
    ``transaction.atomic``: the limit ends with the transaction."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    milliseconds = max(MIN_STATEMENT_TIMEOUT_MS, int(seconds * 1000))
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout'),"
                       " set_config('statement_timeout', %s, true)", [f"{milliseconds}ms"])
        row = cursor.fetchone()
    return str(row[0]) if row else None


def restore_statement_timeout(using: str, previous: str) -> None:
    """Put back the limit :func:`set_statement_timeout` replaced, for the rest of a
    transaction the caller owns."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
