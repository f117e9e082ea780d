"""One call under its circuit's breaker and deadline: the engine under every ``protected``
operation.

:meth:`Engine._call` takes a permit from the breaker (an open circuit refuses at once and the
call never runs), runs ``fn`` in a transaction under the circuit's ``call_timeout``
(``statement_timeout``, and a watchdog that cuts the connection when the budget ends), retries
what may be retried while the deadline and the circuit's retry budget allow, settles the
permit with the outcome, and raises what failed as the library's error class
(:func:`~resilience_crm.provider.classify.error_for`). The query guard stands aside meanwhile
(:mod:`resilience_crm.aside`): the call's statements count on its own circuit only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import connections, transaction

import resilience_crm.aside as aside
import resilience_crm.provider.classify as classify
import resilience_crm.provider.deadlines as deadlines
import resilience_crm.provider.folding as folding
import resilience_crm.provider.retries as retries
from resilience_crm import metrics
from resilience_crm.breakers import machine
from resilience_crm.breakers.registry import get_breaker
from resilience_crm.exceptions import OperationTimeout

logger = logging.getLogger("resilience_crm.provider.calls")

T = TypeVar("T")


class Engine:
    """Runs calls; the monotonic clock, sleep and randomness are injectable for tests."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand

    def _call(self, circuit: str, fn: Callable[[], T], using: str | None,
              *, retry_if: Callable[[BaseException], bool] | None = None,
              operation: str = "", committed_is_done: bool = False,
              then: Callable[[T], object] | None = None) -> T:
        # The call has its own circuit, deadline and retries: the query guard stands aside,
        # so its statements are not counted twice (resilience_crm/aside.py).
        with aside.stand_aside():
            return self._run(circuit, fn, using, retry_if=retry_if, operation=operation,
                             committed_is_done=committed_is_done, then=then)

    def _run(self, circuit: str, fn: Callable[[], T], using: str | None,
             *, retry_if: Callable[[BaseException], bool] | None,
             operation: str, committed_is_done: bool,
             then: Callable[[T], object] | None) -> T:
        metrics.inc("operations", circuit=circuit, operation=operation)
        breaker = get_breaker(circuit)
        permit = breaker.allow()  # CircuitOpenError: never run, never retried
        deadline = deadlines.Deadline(breaker.config.call_timeout, self._monotonic)
        budget = retries.budget_for(circuit)
        budget.deposit()
        attempt = 0
        while True:
            attempt += 1
            started = self._monotonic()
            try:
                value = self._attempt(fn, using, deadline, then)
            except Exception as exc:
                kind = classify.classify(exc)
                lost = _connection_lost(using)
                if (kind.dependency and deadline.expired) or kind.error is OperationTimeout:
                    _finish(breaker, permit, machine.FAILURE, deadline, timeout=True)
                    raise OperationTimeout(circuit=circuit) from exc
                pause = retries.backoff(attempt, kind.retry_after, rand=self._rand)
                took = self._monotonic() - started
                # A retry on a lost connection first waits for a new one: it starts only if
                # that wait, at its longest, fits in what is left too.
                wait = max(took, deadlines.connect_wait(using) if lost and using else 0.0)
                if (kind.retryable and (retry_if is None or retry_if(exc))
                        and attempt < retries.MAX_ATTEMPTS
                        and deadline.remaining() > pause + wait
                        and _may_retry(using) and budget.withdraw()):
                    metrics.inc("retries", circuit=circuit, operation=operation)
                    logger.info("%s %s: retrying after %r (attempt %s)", circuit, operation,
                                exc, attempt + 1)
                    self._sleep(pause)
                    continue
                failed = kind.dependency and breaker.is_failure(exc)
                outcome = machine.FAILURE if failed else machine.SUCCESS
                _finish(breaker, permit, outcome, deadline)
                error = classify.error_for(exc, kind, circuit, retried=attempt > 1)
                if error is None:
                    raise
                raise error from exc
            if deadline.expired:
                _finish(breaker, permit, machine.FAILURE, deadline, timeout=True)
                if committed_is_done:  # a write that committed happened: no error for it
                    return value
                raise OperationTimeout(circuit=circuit)
            breaker.settle(permit, deadline.elapsed())  # a success, or slow
            return value

    def _attempt(self, fn: Callable[[], T], using: str | None, deadline: deadlines.Deadline,
                 then: Callable[[T], object] | None = None) -> T:
        """``fn()``, then ``then(value)``, in one transaction on ``using``. In a transaction
        of its own, the BEGIN and the timeout ride on its first statement and the commit on
        ``then``'s (``folding.py``); inside the caller's, the timeout is set, and put back
        after."""
        if using is None:
            return _and_then(fn, then)
        outer = connections[using].in_atomic_block
        with deadlines.cut_off(using, deadline), transaction.atomic(using=using):
            try:
                if outer:
                    previous = deadlines.set_statement_timeout(using, deadline.remaining())
                    value = _and_then(fn, then)
                    if previous is not None:
                        deadlines.restore_statement_timeout(using, previous)
                    return value
                with folding.folded(using, deadline.remaining) as fold:
                    value = _and_then(fn, then, fold.commit_with_next_statement)
            except Exception:
                # Let go of a broken connection inside the block: leaving it to Django,
                # the block's end would open a new one (to restore autocommit) with no
                # regard to the deadline.
                if not outer and _connection_lost(using):
                    _discard_lost_connections(using)
                raise
            return value


def _and_then(fn: Callable[[], T], then: Callable[[T], object] | None,
              before_then: Callable[[], object] | None = None) -> T:
    """``fn()``, then ``then(value)`` when ``then`` is given, with ``before_then()`` just
    before it (the fold marks ``then``'s statement as the one to carry the commit)."""
    value = fn()
    if then is not None:
        if before_then is not None:
            before_then()
        then(value)
    return value


def _finish(breaker: Any, permit: Any, outcome: str, deadline: deadlines.Deadline,
            *, timeout: bool = False) -> None:
    if timeout:
        metrics.inc("calls", circuit=breaker.name, outcome="timeout")
    breaker.settle(permit, deadline.elapsed(), outcome)


def _may_retry(using: str | None) -> bool:
    """A retry inside the caller's own transaction would run in a broken transaction."""
    return using is None or not connections[using].in_atomic_block


def _connection_lost(using: str | None) -> bool:
    """This thread has no working connection to ``using`` (it was never made, or it broke),
    so another attempt must first get a new one."""
    if using is None:
        return False
    connection = connections[using].connection
    return connection is None or bool(getattr(connection, "closed", False))


def _discard_lost_connections(using: str) -> None:
    """Let go of this thread's broken connection to ``using``. In a pool, the others made
    before it most likely broke with it (a restart, a failover): the pool replaces them all
    (``drain``), rather than hand them out one by one to fail the calls that get them."""
    connection = connections[using]
    connection.close()
    pool = getattr(connection, "pool", None)  # PostgreSQL with OPTIONS["pool"]
    if pool is not None:
        pool.drain()
