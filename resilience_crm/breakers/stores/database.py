from __future__ import annotations

import contextlib
import time
from typing import Any

from django.db import DatabaseError, connections, router, transaction
from django.db.models import F

from resilience_crm import aside
from resilience_crm.breakers import machine
from resilience_crm.breakers.stores.base import BaseStore, Step
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.models import Circuit

#: Compare-and-set attempts before a step gives up under contention.
MAX_ATTEMPTS = 50


class DatabaseStore(BaseStore):
    """Live state in the ``Circuit`` row, for deployments without Redis.

    A step reads the row, applies :func:`resilience_crm.breakers.machine.step` in Python and writes
    the
    result back with ``UPDATE ... WHERE version = %s AND generation = %s``; a concurrent
    writer makes that update match nothing and the step is taken again on the fresh row.
    A row with no live state starts from its own durable record (:meth:`Circuit.live_seed`).
    Time is this process's clock. The query guard stands aside for its statements
    (:mod:`resilience_crm.aside`): the rows may sit on the guarded database, and refusing
    them would take every circuit's shared state away with that database's circuit.
    """

    def __init__(self, alias: str | None = None, clock: Any = time.time) -> None:
        self.alias = alias
        self._clock = clock

    def _manager(self) -> Any:
        return Circuit.objects.using(self.alias or router.db_for_write(Circuit))

    def step(self, step: Step) -> dict[str, Any]:
        try:
            circuits = self._manager()
            with aside.stand_aside(), _contained(circuits.db):
                return self._step(circuits, step)
        except DatabaseError as err:
            raise StoreUnavailable(f"The database store failed: {err}") from err

    def _step(self, circuits: Any, step: Step) -> dict[str, Any]:
        name = step.name
        for _ in range(MAX_ATTEMPTS):
            row = circuits.filter(name=name).values_list("live", "version", "generation").first()
            if row is None:
                circuits.get_or_create(name=name)  # safe when another worker races us
                continue
            live, version, generation = row
            state = live or circuits.live_seed(name)
            now = int(self._clock() * 1000) if step.now is None else step.now
            state, result = machine.step(state, step.config, now, step.rand, step.entries,
                                         step.op, step.arg)
            updated = circuits.filter(name=name, version=version, generation=generation).update(
                live=state, version=version + 1, state=state["state"], generation=state["gen"]
            )
            if updated:
                return result
        raise StoreUnavailable(f"Circuit {name}: too much contention on the database store.")

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            with aside.stand_aside():
                live = self._manager().filter(name=name).values_list("live", flat=True).first()
        except DatabaseError as err:
            raise StoreUnavailable(f"The database store failed: {err}") from err
        return live or None

    def clear(self, name: str) -> None:
        try:
            with aside.stand_aside():
                self._manager().filter(name=name).update(live={}, version=F("version") + 1)
        except DatabaseError as err:
            raise StoreUnavailable(f"The database store failed: {err}") from err


def _contained(alias: str) -> Any:
    """A savepoint when the step runs inside the caller's transaction (a breaker asked from
    within ``atomic``, or the query guard's, for a statement in one): a step that fails
    must not abort the caller's transaction with it. Outside one, nothing to contain."""
    if connections[alias].in_atomic_block:
        return transaction.atomic(using=alias)
    return contextlib.nullcontext()
