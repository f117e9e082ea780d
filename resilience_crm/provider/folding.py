"""Fewer round trips to the database per protected call: what the call engine has to say
besides the caller's own statements goes out in the same message as one of them.

One execute wrapper (:class:`Fold`, installed by :func:`folded` for the call's transaction)
does both:

- ``BEGIN`` and ``SET LOCAL statement_timeout`` are sent with the transaction's first
  statement, instead of in round trips of their own before it. PostgreSQL runs the
  statements of one message in order, each under the timeout set before it.
- after :meth:`Fold.commit_with_next_statement`, ``COMMIT`` is sent with the next
  statement, which the caller makes the transaction's last; Django's own commit then finds
  nothing left to do and sends nothing.

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


class Fold:
    """The call's execute wrapper: its first statement carries ``BEGIN`` and the timeout, the
    one after :meth:`commit_with_next_statement` carries ``COMMIT``. One wrapper and two
    flags; a cursor that cannot fold gets the timeout in a statement of its own instead,
    and psycopg's ``BEGIN`` and Django's commit as usual."""

    def __init__(self, remaining: Callable[[], float]) -> None:
        self.remaining = remaining
        self.begun = False
        self.commit = False

    def commit_with_next_statement(self) -> None:
        """The next statement carries ``COMMIT``: call it where that statement is the
        transaction's last (nothing after it may run in the transaction, as nothing would).
        If it cannot carry it, Django commits as usual."""
        self.commit = True

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
        if self.begun and not self.commit:  # a statement in the middle: nothing to carry
            return execute(sql, params, many, context)
        cursor, raw = context["cursor"].cursor, context["connection"].connection
        folds = not many and bool(CLIENT_CURSORS) and isinstance(cursor, CLIENT_CURSORS)
        before, after, skipped = "", "", 0
        if not self.begun:
            self.begun = True
            setting = statement_timeout(self.remaining())
            if not folds:
                with raw.cursor() as own:
                    own.execute(setting)
            elif not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE:
                # psycopg would send a BEGIN of its own and wait for it: this statement
                # carries it instead, and holds every later one in the transaction.
                raw.autocommit = True
                before, skipped = f"BEGIN; {setting}; ", 2
            else:
                before, skipped = f"{setting}; ", 1
        if self.commit:
            self.commit = False
            after = "; COMMIT" if folds else ""
        if not (before or after):
            return execute(sql, params, many, context)
        result = execute(f"{before}{sql}{after}", params, many, context)
        for _ in range(skipped):
            cursor.nextset()  # the caller reads its own statement's result
        return result


@contextlib.contextmanager
def folded(using: str, remaining: Callable[[], float]) -> Iterator[Fold]:
    """Inside the block (an outermost ``transaction.atomic`` on ``using``), the statements
    on ``using`` go through the :class:`Fold` it gives, with the timeout ``remaining()``
    says at the first, in seconds; off PostgreSQL the fold is given but not installed. A
    block that runs no statement begins nothing.

    With the ``BEGIN`` sent here, the connection is in autocommit for the rest of the block
    (psycopg begins nothing more), and Django's atomic block ends the transaction with its
    ``COMMIT`` or ``ROLLBACK`` as usual (psycopg sends either when the server says a
    transaction is open, whatever its autocommit); Django turns autocommit on again when the
    block ends."""
    connection = connections[using]
    fold = Fold(remaining)
    if connection.vendor != "postgresql":
        yield fold
        return
    with connection.execute_wrapper(fold):
        yield fold
