from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class StateMissing(Exception):  # noqa: N818  (a condition, not an error: the caller seeds)
    """The store holds no state for the circuit and was asked not to start a new one."""


class BaseStore:
    """Where circuits' live state sits, and the one operation on it: an atomic step.

    ``step`` applies :func:`resilience_crm.breakers.machine.step` to the circuit's state in one
    atomic
    operation and returns the step's result (see that function). When the store has no state
    for the circuit it starts from ``seed`` if given, else raises :class:`StateMissing` if
    ``require_state``, else starts a new closed circuit. A store that cannot be reached, or
    that fails in any other way, raises :class:`resilience_crm.exceptions.StoreUnavailable`.
    """

    #: ``True`` when every process sees the same state (Redis, the database).
    shared = True
    #: ``True`` for a store that stands in for the shared one when it fails; its ``step``
    #: takes ``shared_only=True`` to refuse standing in (see ``stores/failover.py``).
    fails_over = False

    @property
    def available(self) -> bool:
        """Whether the store answered the last time it was asked (see the failover store)."""
        return True

    def step(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        rand: float,
        entries: Sequence[Sequence[Any]] = (),
        op: str | None = None,
        arg: Mapping[str, Any] | None = None,
        require_state: bool = False,
        seed: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, name: str) -> dict[str, Any] | None:
        """The circuit's stored state (see :func:`resilience_crm.breakers.machine.new_state`)
        without
        changing it, or ``None`` when there is none."""
        raise NotImplementedError

    def clear(self, name: str) -> None:
        """Forget the circuit's live state; the next step starts from a new closed circuit."""
        raise NotImplementedError
