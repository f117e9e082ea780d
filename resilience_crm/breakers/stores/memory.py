from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from resilience_crm.breakers import machine
from resilience_crm.breakers.stores.base import BaseStore, StateMissing


class MemoryStore(BaseStore):
    """State in this process only: for tests, single-process deployments, and the fallback a
    worker uses while the shared store is unreachable."""

    shared = False

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

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
        now = int(self._clock() * 1000)
        with self._lock:
            state = self._states.get(name)
            if state is None:
                if seed is None and require_state:
                    raise StateMissing(name)
                state = machine.new_state() | copy.deepcopy(dict(seed or {}))
                self._states[name] = state
            _, result = machine.step(state, config, now, rand, entries, op, arg)
        return result

    def read(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            state = self._states.get(name)
            return None if state is None else copy.deepcopy(state)

    def seed(self, name: str, state: Mapping[str, Any]) -> None:
        """Start ``name`` from ``state`` (a full state dict) unless it already has one."""
        with self._lock:
            self._states.setdefault(name, copy.deepcopy(dict(state)))

    def clear(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)
