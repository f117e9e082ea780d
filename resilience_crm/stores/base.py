from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class BaseStore:
    """Where circuits' live state sits, and the one operation on it: an atomic step.

    ``step`` applies :func:`resilience_crm.core.step` to the circuit's state in one atomic
    operation and returns the step's result (see that function). A store that cannot be
    reached raises :class:`resilience_crm.exceptions.StoreUnavailable`.
    """

    #: ``True`` when every process sees the same state (Redis, the database).
    shared = True
    #: ``time.monotonic()`` until which this process's breakers treat the store as down
    #: without asking it: one breaker's timeout spares the others theirs.
    unavailable_until = 0.0

    def step(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        rand: float,
        entries: Sequence[Sequence[Any]] = (),
        op: str | None = None,
        arg: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def clear(self, name: str) -> None:
        """Forget the circuit's live state; the next step starts from a new closed circuit."""
        raise NotImplementedError
