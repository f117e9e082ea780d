from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from typing import Any

from resilience_crm.breakers import machine
from resilience_crm.breakers.stores.base import BaseStore, StateMissing, Step


class MemoryStore(BaseStore):
    """State in this process only: for tests, single-process deployments, and the fallback a
    worker uses while the shared store is unreachable."""

    shared = False

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def step(self, step: Step) -> dict[str, Any]:
        now = int(self._clock() * 1000) if step.now is None else step.now
        with self._lock:
            state = self._states.get(step.name)
            if state is None:
                if step.seed is None and step.require_state:
                    raise StateMissing(step.name)
                state = machine.new_state() | copy.deepcopy(dict(step.seed or {}))
                self._states[step.name] = state
            _, result = machine.step(state, step.config, now, step.rand, step.entries, step.op,
                                     step.arg)
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
