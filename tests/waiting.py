"""Wait for a condition with a generous deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import OperationalError

#: Seconds before a wait is a failure: long enough for a loaded 2-core machine.
PATIENCE = 30.0


def wait_until(condition: Callable[[], object], what: str, timeout: float = PATIENCE,
               interval: float = 0.01) -> None:
    """Poll ``condition`` every ``interval`` seconds until it holds. A query that meets a
    table another thread is writing (SQLite's shared in-memory test database locks it)
    counts as "not yet"; any other error, or a failed assertion, ends the wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)  # polling the condition, not synchronisation
