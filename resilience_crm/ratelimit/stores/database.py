"""Rate limits in PostgreSQL, for deployments without Redis: one call of the function
``resilience_crm_gcra`` (installed by migration 0007) per decision decides every limit that
applies, all or none, on the database server's clock, with exactly the arithmetic of
``gcra.py`` and ``gcra.lua``.

State is one narrow row per key and limit in the UNLOGGED table ``resilience_crm_ratelimit``
(a crash empties it: every limit starts full again). The function locks a request's rows in
key order, so decisions are exact across processes and never deadlock.

The store talks to the database on a connection of its own per thread (autocommit, READ
COMMITTED), built from the settings of the app's alias (``DATABASE_ALIAS``): a decision
never joins the request's transaction (``ATOMIC_REQUESTS`` would hold the rows' locks for the
whole request, and a rolled-back request would give its charge back). Every statement is
bounded by ``RATELIMIT_STORE_TIMEOUT`` twice: ``statement_timeout`` on the server, and the
client's wait for the reply (a server gone silent, a blackhole); connecting by
``connect_timeout`` (libpq waits at least 2 s). Past either, the store raises
``StoreUnavailable`` and the limiter applies ``FAIL_OPEN``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from django.db import connections

from resilience_crm.conf import database_alias, settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.libpq import with_statement_timeout
from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import Limit, Outcome
from resilience_crm.ratelimit.stores.base import BaseLimiterStore

logger = logging.getLogger("resilience_crm.ratelimit.stores.database")

TABLE = "resilience_crm_ratelimit"
DECIDE = "SELECT resilience_crm_gcra(%s, %s::bigint[], %s::bigint[], %s, %s, %s)"
# The same for one limit, the usual case: scalars cost psycopg less to send than lists.
DECIDE_ONE = ("SELECT resilience_crm_gcra(ARRAY[%s::text], ARRAY[%s::bigint],"
              " ARRAY[%s::bigint], ARRAY[%s::boolean], %s::bigint, %s::bigint)")
# The keys' TATs and when they last refused, with the server's clock, in one statement.
PEEK = (
    "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
    " array(SELECT r.tat FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, i)"
    " LEFT JOIN resilience_crm_ratelimit AS r ON r.key = u.k ORDER BY u.i),"
    " array(SELECT r.refused FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, i)"
    " LEFT JOIN resilience_crm_ratelimit AS r ON r.key = u.k ORDER BY u.i)"
)
#: Rows one sweep statement deletes at most, and statements one pass runs at most.
SWEEP_BATCH = 1000
SWEEP_BATCHES = 10
#: Microseconds a row whose bucket is full again is kept for its last refusal
#: (``resilience_limits`` shows it), at most.
REFUSAL_KEPT_US = 24 * 3600 * 1_000_000
# Rows whose bucket is full again (and whose refusal is old), a batch at a time; rows a
# decision holds are skipped, so the sweep never waits on one nor makes one wait long.
SWEEP = (
    "DELETE FROM resilience_crm_ratelimit WHERE key = ANY(array("
    "SELECT key FROM resilience_crm_ratelimit"
    " WHERE tat < %(now)s AND (refused IS NULL OR refused < %(now)s - %(kept)s)"
    " LIMIT %(batch)s FOR UPDATE SKIP LOCKED))"
)
NOW = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
#: psycopg's connect timeout, in seconds: the alias's when it is shorter (libpq waits at
#: least 2 s whatever it says).
CONNECT_TIMEOUT = 2


class Peeked(NamedTuple):
    """What the table holds for some limits: their TATs and last refusals (``None`` when
    never charged or refused), and the server's clock, all in microseconds."""

    now_us: int
    tats: list[int | None]
    refused: list[int | None]


class _Connection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends after ``wait_timeout``
    seconds (psycopg raises then; the connection is discarded)."""

    wait_timeout: float | None = None
    #: The cursor every statement of the store runs on (one per connection: less work per
    #: statement than a new one each time).
    statements: psycopg.Cursor[Any]

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        return super().wait(gen, interval, self.wait_timeout if timeout is None else timeout)


#: Each thread's connections, by process and connection settings: kept across stores (the
#: limiter builds a new one when settings change), never used by a forked child (its own
#: entries are under its own pid; the parent's stay referenced, so they are never finished
#: from the child, which would end the parent's session).
_local = threading.local()
#: Every connection this process opened, for :func:`close_connections` ``(every_thread=True)``.
_opened: weakref.WeakSet[_Connection] = weakref.WeakSet()


def _forget_the_parents() -> None:
    """In a forked child: the parent's connections are not the child's to close."""
    global _opened
    _opened = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_the_parents)


class DatabaseLimiterStore(BaseLimiterStore):
    shared = True
    records_refusals = True
    #: Check E037 refuses the store on any other database.
    needs_postgresql = True

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias or database_alias()
        self.timeout = float(settings.RATELIMIT_STORE_TIMEOUT)
        self._params: dict[str, Any] | None = None
        self._id = ""

    def params(self) -> dict[str, Any]:
        """psycopg's connection arguments: the alias's, with ``statement_timeout`` and a
        ``connect_timeout`` (worked out once per store; the limiter builds a new store when
        settings change)."""
        if self._params is None:
            params = connections[self.alias].get_connection_params()
            for name in ("cursor_factory", "context", "prepare_threshold"):
                params.pop(name, None)
            params = with_statement_timeout(params, self.timeout)
            # The alias's own, but never longer than ours: a decision is not a query that
            # may wait a minute for a connection.
            params["connect_timeout"] = min(
                int(params.get("connect_timeout") or CONNECT_TIMEOUT), CONNECT_TIMEOUT)
            self._id = repr(sorted(params.items()))
            self._params = params
        return self._params

    def connection(self) -> _Connection:
        """This thread's connection, opened on first use (and again after a failure)."""
        params = self.params()
        key = (os.getpid(), self._id)
        held: dict[tuple[int, str], _Connection] = _local.__dict__.setdefault("held", {})
        connection = held.get(key)
        if connection is not None and not connection.closed:
            return connection
        try:
            connection = _Connection.connect(**params, autocommit=True)
        except psycopg.Error as err:
            raise StoreUnavailable("The rate-limit database is unreachable.") from err
        connection.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        connection.prepare_threshold = 0  # the few statements, prepared on first use
        connection.wait_timeout = self.timeout + 0.05  # the server's own cancel comes first
        connection.statements = connection.cursor()
        _opened.add(connection)
        held[key] = connection
        return connection

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        connection = self.connection()
        try:
            cursor = connection.statements
            cursor.execute(sql, params)
            row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as err:
            self._discard(connection)
            raise StoreUnavailable("The rate-limit database failed or is too slow.") from err
        return row

    def _discard(self, connection: _Connection) -> None:
        try:
            connection.close()
        except psycopg.Error:  # pragma: no cover - closing a broken socket
            logger.debug("Closing the limiter's connection failed.", exc_info=True)

    def evaluate(self, limits: Sequence[Limit], cost: int = 1,
                 now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        now = None if now_us is None else int(now_us)
        if len(limits) == 1:
            limit = limits[0]
            row = self._run(DECIDE_ONE, (limit.key, limit.interval_us, limit.tolerance_us,
                                         limit.shadow, int(cost), now))
        else:
            row = self._run(DECIDE, (
                [limit.key for limit in limits], [limit.interval_us for limit in limits],
                [limit.tolerance_us for limit in limits], [limit.shadow for limit in limits],
                int(cost), now,
            ))
        try:
            values = row[0]
            outcomes = [Outcome(values[i] == 1, values[i + 1], values[i + 2], values[i + 3])
                        for i in range(1, 4 * len(limits), 4)]
            allowed = values[0] == 1
        except (TypeError, IndexError) as err:  # not the function's answer
            raise StoreUnavailable("The rate-limit database answered nonsense.") from err
        return allowed, outcomes

    def peek(self, limits: Sequence[Limit], cost: int = 1,
             now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        seen = self.inspect(limits)
        now = seen.now_us if now_us is None else now_us
        allowed, outcomes, _ = gcra.evaluate(limits, seen.tats, now, cost)
        return allowed, outcomes

    def inspect(self, limits: Sequence[Limit]) -> Peeked:
        """The rows of ``limits`` as they are, in one round trip."""
        keys = [limit.key for limit in limits]
        now, tats, refused = self._run(PEEK, (keys, keys))
        # A row inserted by a refused first request holds 0: as good as absent.
        return Peeked(now, [tat or None for tat in tats], list(refused))

    def clear(self) -> None:
        """Delete every row: every limit full again (for tests)."""
        self._run("DELETE FROM resilience_crm_ratelimit", ())

    def refusals(self, limits: Sequence[Limit]) -> list[int | None]:
        return self.inspect(limits).refused

    def sweep(self, batch: int = SWEEP_BATCH, batches: int = SWEEP_BATCHES) -> int:
        """Delete rows whose bucket is full again, ``batch`` per statement and at most
        ``batches`` statements, each its own short transaction; how many went."""
        now = self._run(NOW, ())[0]
        deleted = 0
        for _ in range(batches):
            connection = self.connection()
            try:
                cursor = connection.statements
                cursor.execute(SWEEP, {"now": now, "kept": REFUSAL_KEPT_US, "batch": batch})
                count = cursor.rowcount
            except psycopg.Error as err:
                self._discard(connection)
                raise StoreUnavailable("The rate-limit database failed.") from err
            deleted += count
            if count < batch:
                break
        return deleted


def close_connections(every_thread: bool = False) -> None:
    """Close the calling thread's connections of every database limiter store (a thread that
    ends has its own closed when they are collected); with ``every_thread``, those of every
    thread of this process (at exit, or at the end of a test run: a thread still deciding
    then gets ``StoreUnavailable``)."""
    held: dict[tuple[int, str], _Connection] = _local.__dict__.get("held", {})
    for key in [key for key in held if key[0] == os.getpid()]:
        held.pop(key).close()
    if every_thread:
        for connection in list(_opened):
            connection.close()
