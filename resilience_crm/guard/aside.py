"""Where the query guard stands aside: a context variable, so it follows the code that set
it (its thread, or its task under asyncio) and nothing else.

``protected`` sets it for the whole of a call (it runs that call under its own circuit,
with its own deadline and retries: counting its statements again on the database's circuit
would count them twice); the guard sets it while it steps its own breaker, whose store may
be the very database it guards. It imports nothing, so any feature may use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token

_aside: ContextVar[bool] = ContextVar("resilience_crm_guard_aside", default=False)


def standing_aside() -> bool:
    """Whether the guard lets statements through unguarded here."""
    return _aside.get()


def begin() -> Token[bool]:
    """Stand aside until :func:`end` with the token returned (the guard's hot path: a
    ``with`` block would cost a generator per statement)."""
    return _aside.set(True)


def end(token: Token[bool]) -> None:
    _aside.reset(token)


@contextlib.contextmanager
def stand_aside() -> Iterator[None]:
    """Run the block with the guard standing aside (nested blocks are fine)."""
    token = _aside.set(True)
    try:
        yield
    finally:
        _aside.reset(token)
