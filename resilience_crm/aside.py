"""Where the query guard stands aside: a context variable, so it follows the code that set
it (its thread, or its task under asyncio) and nothing else.

It is the app's own machinery that the guard lets through:

- ``protected``, for the whole of a call (it runs that call under its own circuit, with its
  own deadline and retries: counting its statements again on the database's circuit would
  count them twice);
- the guard, while it steps its own breaker;
- the database breaker store, for every circuit's step (its state lives in the app's tables,
  which may sit on the guarded database: refusing them would take every circuit's shared
  state away with the database's circuit), and the durable row a circuit the Redis store
  has lost is seeded from, for the same reason;
- a manual change (:func:`resilience_crm.breakers.control.steer`): an operator's reset of
  the database's own circuit must reach its row, whatever that circuit says.

It imports nothing, and sits outside the feature folders, so any of them may use it.
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
    token = begin()
    try:
        yield
    finally:
        end(token)
