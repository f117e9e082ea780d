"""Retries inside a call's deadline: exponential backoff with full jitter, ``Retry-After``
honoured, and a per-process retry budget so retries cannot multiply load during an outage.

Written small rather than with tenacity: the two rules that matter here, "never sleep past the
call's deadline" and "a token bucket shared by every call on a circuit", would each be a
custom stop/wait strategy around tenacity's loop, and the loop itself is ten lines.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Attempts per call, the first included.
MAX_ATTEMPTS = 3
#: Backoff before the first retry, doubled for each further one, in seconds.
BASE_DELAY = 0.05
#: The longest backoff, in seconds.
MAX_DELAY = 1.0
#: Tokens a retry costs; a first attempt deposits ``RATIO`` of one.
RATIO = 0.2
#: Tokens the bucket holds at most (and starts with).
CAPACITY = 10.0
#: Tokens added per second whatever the traffic, so a quiet process may still retry.
REFILL_PER_SECOND = 1.0


@dataclass
class RetryBudget:
    """A token bucket: every call deposits ``ratio`` of a token, every retry withdraws one.

    While most calls fail, retries soon run dry and each call costs the dependency about
    ``1 + ratio`` attempts instead of ``MAX_ATTEMPTS``."""

    ratio: float = RATIO
    capacity: float = CAPACITY
    refill_per_second: float = REFILL_PER_SECOND
    monotonic: Callable[[], float] = time.monotonic
    tokens: float = CAPACITY
    _last: float = field(default=-1.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deposit(self) -> None:
        with self._lock:
            self._refill()
            self.tokens = min(self.capacity, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        with self._lock:
            self._refill()
            if self.tokens < 1 - 1e-9:  # ten deposits of 0.1 make one token
                return False
            self.tokens -= 1
            return True

    def _refill(self) -> None:
        now = self.monotonic()
        if self._last >= 0:
            self.tokens = min(self.capacity, self.tokens + (now - self._last)
                              * self.refill_per_second)
        self._last = now


def backoff(attempt: int, retry_after: float | None = None, *,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry): full jitter,
    uniform in ``[0, min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))]``, and never less than
    what ``Retry-After`` asked for."""
    delay = rand() * min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
    return max(delay, retry_after or 0.0)


_budgets: dict[str, RetryBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(circuit: str) -> RetryBudget:
    """This process's retry budget for ``circuit``."""
    budget = _budgets.get(circuit)
    if budget is None:
        with _budgets_lock:
            budget = _budgets.setdefault(circuit, RetryBudget())
    return budget


def clear_budgets() -> None:
    with _budgets_lock:
        _budgets.clear()
