"""Waiting for a condition with a generous deadline, instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds to keep trying before a wait is a failure: long enough for a loaded machine.
PATIENCE = 10.0


def wait_for(condition: Callable[[], bool], what: str, patience: float = PATIENCE) -> None:
    deadline = time.monotonic() + patience
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
