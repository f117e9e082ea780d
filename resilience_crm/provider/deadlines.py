"""A call's time budget, and the limits derived from it on the database connection.

The budget is the circuit's ``call_timeout``. On PostgreSQL the time left becomes
``SET LOCAL statement_timeout`` inside the call's transaction, so a slow query is stopped by
the server. A server that stops answering altogether cannot cancel anything: :func:`cut_off`
shuts the connection's socket down once the budget is spent, so the wait ends there and then.
Waiting for a new connection is bounded by the connection's own settings (the pool's
``timeout``, libpq's ``connect_timeout``); :func:`connect_wait` says how long that can take,
so a retry that needs a new connection starts only when the wait fits: see docs/provider.md.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections

#: The shortest statement_timeout set, in milliseconds (0 would mean "no limit").
MIN_STATEMENT_TIMEOUT_MS = 1
#: Seconds past the deadline before :func:`cut_off` shuts a connection down: the server's
#: own cancel (``statement_timeout``) arrives first and leaves the connection usable.
CUT_GRACE = 0.05
#: libpq waits at least this long to connect, whatever ``connect_timeout`` says.
LIBPQ_MIN_CONNECT_TIMEOUT = 2.0
#: psycopg's connect timeout when the options name none (libpq's "forever").
PSYCOPG_DEFAULT_CONNECT_TIMEOUT = 130.0
#: psycopg_pool's wait for a connection when the pool options name no ``timeout``.
PSYCOPG_POOL_DEFAULT_TIMEOUT = 30.0
#: How long psycopg_pool keeps retrying a failed connect (backing off 1, 2, 4 s...) when the
#: pool options name no ``reconnect_timeout``.
PSYCOPG_POOL_DEFAULT_RECONNECT_TIMEOUT = 300.0


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


def connect_wait(using: str) -> float:
    """The longest a new connection to ``using`` may take to arrive: the pool's ``timeout``
    for a pooled PostgreSQL alias (its workers connect), libpq's effective
    ``connect_timeout`` for an unpooled one, nothing for an in-process database."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return 0.0
    options = connection.settings_dict.get("OPTIONS") or {}
    pool = options.get("pool")
    if pool:
        return float(pool_timeout(pool))
    seconds = float(options.get("connect_timeout") or 0)
    if seconds <= 0:
        return PSYCOPG_DEFAULT_CONNECT_TIMEOUT
    return max(LIBPQ_MIN_CONNECT_TIMEOUT, float(int(seconds)))


def pool_timeout(pool: Any) -> Any:
    """How long psycopg_pool waits for a connection, by ``OPTIONS["pool"]`` (``True`` or a
    dict of the pool's arguments): its ``timeout``, else psycopg_pool's default."""
    return _pool_option(pool, "timeout", PSYCOPG_POOL_DEFAULT_TIMEOUT)


def pool_reconnect_timeout(pool: Any) -> Any:
    """How long psycopg_pool retries a failed connect before it gives up, by
    ``OPTIONS["pool"]``: its ``reconnect_timeout``, else psycopg_pool's default. While it
    retries, the pool counts the connection as its own and waits out each backoff, however
    many requests are waiting; once it gives up, the next request that waits connects at
    once."""
    return _pool_option(pool, "reconnect_timeout", PSYCOPG_POOL_DEFAULT_RECONNECT_TIMEOUT)


def _pool_option(pool: Any, name: str, default: float) -> Any:
    """``OPTIONS["pool"]``'s ``name`` (``pool`` is ``True`` or a dict of the pool's
    arguments), else psycopg_pool's ``default``."""
    return pool.get(name, default) if isinstance(pool, dict) else default


@contextlib.contextmanager
def cut_off(using: str, deadline: Deadline) -> Iterator[None]:
    """Shut down the socket of this thread's connection to ``using`` if the block still runs
    :data:`CUT_GRACE` after ``deadline``: a query waiting on a server that went silent (a
    blackhole, a hung host) then fails at once with a lost connection, instead of when TCP
    gives up, which may be never."""
    wrapper = connections[using]
    lock = threading.Lock()
    running = True

    def cut() -> None:
        with lock:
            if running:
                _shut_down(wrapper.connection)

    armed = _watchdog.arm(deadline.remaining() + CUT_GRACE, cut)
    try:
        yield
    finally:
        with lock:
            running = False
        _watchdog.disarm(armed)


def _shut_down(connection: Any) -> None:
    """Shut the connection's socket down (both ways), which wakes whoever waits on it."""
    fileno = getattr(connection, "fileno", None)
    if fileno is None:
        return  # not connected yet, or a database without a socket
    # A connection closed meanwhile has nothing left to cut.
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """One thread per process that runs each armed callback at its time, unless it was
    disarmed first: a timer per call without a thread per call."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._condition = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, after: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` on the watchdog's thread ``after`` seconds from now, unless
        :meth:`disarm` comes first."""
        if self._pid != os.getpid():  # a forked worker: the parent's thread is not here
            self._start()
        with self._condition:
            armed = next(self._ids)
            heapq.heappush(self._due, (self._monotonic() + after, armed, callback))
            self._pending.add(armed)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="resilience-watchdog",
                                                daemon=True)
                self._thread.start()
            elif self._due[0][1] == armed:
                self._condition.notify()  # sooner than what the thread waits for
        return armed

    def disarm(self, armed: int) -> None:
        with self._condition:
            self._pending.discard(armed)

    def _run(self) -> None:
        while True:
            with self._condition:
                now = self._monotonic()
                while not self._due or self._due[0][0] > now:
                    self._condition.wait(self._due[0][0] - now if self._due else None)
                    now = self._monotonic()
                _, armed, callback = heapq.heappop(self._due)
                if armed not in self._pending:
                    continue  # disarmed: the call ended in time
                self._pending.discard(armed)
            callback()


_watchdog = Watchdog()
