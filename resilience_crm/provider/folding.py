"""Fewer round trips to the database per protected call: what the call engine has to say
besides the caller's own statements goes out in the same message as one of them.

- :func:`begin_with_first_statement`: ``BEGIN`` and ``SET LOCAL statement_timeout`` are
  sent with the transaction's first statement, instead of in round trips of their own before
  it. PostgreSQL runs the statements of one message in order, each under the timeout set
  before it.
- :func:`commit_with_next_statement`: ``COMMIT`` is sent with the next statement, which the
  caller makes the transaction's last; Django's own commit then finds nothing left to do and
  sends nothing.

So a protected create is two round trips (docs/provider.md): ``BEGIN``, the timeout and the
handler's insert; then the idempotency row and the ``COMMIT``. Plain DRF's create is two as
well (its token lookup, the insert).

Both need several statements in one message, which PostgreSQL takes in its simple query
protocol: psycopg 3's client-side binding cursor (``ClientCursor``, Django's default) sends
a statement that way, its parameters inlined. With any other cursor (``server_side_binding``,
a server-side cursor, psycopg2) or an ``executemany``, the timeout goes in a statement of its
own just before the first, and the ``BEGIN`` and the commit are psycopg's and Django's: the
same effect, a round trip more for each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections

import resilience_crm.provider.deadlines as deadlines

try:
    from psycopg import ClientCursor as _ClientCursor
    from psycopg.pq import TransactionStatus

    CLIENT_CURSORS: tuple[type, ...] = (_ClientCursor,)
except ImportError:  # psycopg2, or no PostgreSQL at all
    CLIENT_CURSORS = ()

def statement_timeout(seconds: float) -> str:
    """The statement limiting every later one in the transaction to ``seconds``."""
    milliseconds = max(deadlines.MIN_STATEMENT_TIMEOUT_MS, int(seconds * 1000))
    return f"SET LOCAL statement_timeout = '{milliseconds}ms'"


def folds(cursor: Any) -> bool:
    """Whether ``cursor`` (a DB-API cursor) sends several statements in one message."""
    return bool(CLIENT_CURSORS) and isinstance(cursor, CLIENT_CURSORS)


@contextlib.contextmanager
def begin_with_first_statement(using: str, remaining: Callable[[], float]) -> Iterator[None]:
    """Inside the block (an outermost ``transaction.atomic`` on ``using``, PostgreSQL), the
    first statement carries ``BEGIN`` and ``SET LOCAL statement_timeout`` to what
    ``remaining()`` says then, in seconds. A block that runs no statement begins nothing.

    psycopg would send its own ``BEGIN`` first, and wait for it: the connection is put in
    autocommit for the rest of the block instead, where the ``BEGIN`` sent here holds every
    later statement in the one transaction, up to the ``COMMIT`` or ``ROLLBACK`` of Django's
    atomic block as usual (psycopg sends either when the server says a transaction is open,
    whatever its autocommit). Django turns autocommit on again when the block ends."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    sent = False

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                context: dict[str, Any]) -> Any:
        nonlocal sent
        if sent:
            return execute(sql, params, many, context)
        sent = True
        setting = statement_timeout(remaining())
        cursor, raw = context["cursor"].cursor, context["connection"].connection
        if many or not folds(cursor):
            with raw.cursor() as own:
                own.execute(setting)
            return execute(sql, params, many, context)
        begin = _idle(raw)
        if begin:
            raw.autocommit = True  # no BEGIN of psycopg's own: this statement carries it
        result = execute(f"{'BEGIN; ' if begin else ''}{setting}; {sql}", params, many,
                         context)
        for _ in range(2 if begin else 1):
            cursor.nextset()  # the caller reads its own statement's result
        return result

    with connection.execute_wrapper(wrapper):
        yield


def _idle(raw: Any) -> bool:
    """Whether psycopg would begin a transaction before the next statement on ``raw``."""
    return not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE


@contextlib.contextmanager
def commit_with_next_statement(using: str) -> Iterator[None]:
    """Inside the block, the next statement on ``using`` carries ``COMMIT``: call it where
    that statement is the last of the transaction (nothing after it may run in the
    transaction, as nothing would). If it cannot carry it, Django commits as usual."""
    connection = connections[using]
    sent = False

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                context: dict[str, Any]) -> Any:
        nonlocal sent
        if sent or many or not folds(context["cursor"].cursor):
            sent = True
            return execute(sql, params, many, context)
        sent = True
        return execute(f"{sql}; COMMIT", params, many, context)

    with connection.execute_wrapper(wrapper):
        yield
