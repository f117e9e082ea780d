"""Stores apply one breaker step atomically; see
:class:`resilience_crm.breakers.stores.base.BaseStore`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class StateMissing(Exception):  # noqa: N818  (a condition, not an error: the caller seeds)
    """The store holds no state for the circuit and was asked not to start a new one."""


class Step(NamedTuple):
    """One step a breaker asks its store for: the arguments of
    :func:`resilience_crm.breakers.machine.step`, the circuit it applies to, and how to
    start a circuit the store has no state for. The breaker builds one per store call; a
    wrapper that needs another hands on a copy (``_replace``)."""

    name: str
    #: The breaker's settings as :meth:`~resilience_crm.breakers.machine.Config.as_step_config`
    #: gives them.
    config: Mapping[str, Any]
    rand: float
    #: Outcomes to apply first: ``[generation, outcome, count, permit]`` each.
    entries: Sequence[Sequence[Any]] = ()
    #: ``"acquire"``, ``"set"``, ``"config"``, or ``None`` to only read.
    op: str | None = None
    arg: Mapping[str, Any] | None = None
    #: With no state stored: raise :class:`StateMissing` (unless ``seed`` is given).
    require_state: bool = False
    #: With no state stored: start from this state dict instead of a new closed circuit.
    seed: Mapping[str, Any] | None = None
    #: A change that must reach every worker (reset, force, overrides): a store that would
    #: stand in for an unreachable shared one raises ``StoreUnavailable`` instead.
    shared_only: bool = False
    #: Milliseconds that replace the store's clock: for tests only.
    now: int | None = None


class BaseStore:
    """Where circuits' live state sits, and the one operation on it: an atomic step.

    ``step`` applies :func:`resilience_crm.breakers.machine.step` to the circuit's state in one
    atomic operation and returns the step's result (see that function). When the store has no
    state for the circuit it starts from ``step.seed`` if given, else raises
    :class:`StateMissing` if ``step.require_state``, else starts a new closed circuit. A store
    that cannot be reached, or that fails in any other way, raises
    :class:`resilience_crm.exceptions.StoreUnavailable`.
    """

    #: ``True`` when every process sees the same state (Redis, the database).
    shared = True

    @property
    def available(self) -> bool:
        """Whether the store answered the last time it was asked (see the failover store)."""
        return True

    def shard(self, name: str) -> str:
        """Which part of the store holds the circuit ``name``, for failing over part by part:
        a Redis Cluster master is down while the others answer. Answered without a network
        call, and never raises; a store in one piece has one shard, ``""``."""
        return ""

    def step(self, step: Step) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, name: str) -> dict[str, Any] | None:
        """The circuit's stored state (see :func:`resilience_crm.breakers.machine.new_state`)
        without changing it, or ``None`` when there is none."""
        raise NotImplementedError

    def clear(self, name: str) -> None:
        """Forget the circuit's live state; the next step starts from a new closed circuit."""
        raise NotImplementedError
