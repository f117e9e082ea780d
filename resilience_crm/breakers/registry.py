"""One :class:`~resilience_crm.breakers.breaker.Breaker` per circuit name in each process."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from django.db import connections

from resilience_crm import aside, flusher
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.machine import Config
from resilience_crm.breakers.stores.base import BaseStore
from resilience_crm.breakers.stores.failover import FailoverStore
from resilience_crm.conf import settings
from resilience_crm.models import Circuit

logger = logging.getLogger("resilience_crm.breakers.registry")

_breakers: dict[str, Breaker] = {}
_store: BaseStore | None = None
_lock = threading.RLock()
_making: dict[str, threading.Lock] = {}  # one lock per circuit being made
_building = threading.local()  # names of the circuits this thread is making


def get_store() -> BaseStore:
    """The store that ``RESILIENCE_CRM["STORE"]`` selects, built once per process. A shared
    one comes wrapped in a :class:`FailoverStore`: the process's own breakers stand in while
    it fails, and circuits it has lost are seeded from their durable rows."""
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                store = settings.store_class()()
                if store.shared:
                    store = FailoverStore(store, retry_interval=settings.STORE_RETRY_INTERVAL,
                                          seed=durable_seed)
                _store = store
    return _store


def durable_seed(name: str) -> dict[str, Any]:
    """The live state a circuit the shared store has lost starts from: its durable row
    (:meth:`Circuit.live_seed`), read with the query guard standing aside (the row may sit on
    the guarded database: refused, it would take the shared store away from every circuit).
    Read on a thread of its own when an event loop runs in this one (the ORM refuses to run
    there); it happens once per circuit the store has lost."""

    def seed() -> dict[str, Any]:
        with aside.stand_aside():
            return Circuit.objects.live_seed(name)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return seed()

    def read() -> dict[str, Any]:
        try:
            return seed()
        finally:
            connections.close_all()  # this short-lived thread's own connection

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resilience-seed") as pool:
        return pool.submit(read).result()


def shared_store() -> BaseStore:
    """The store itself, without the failover wrapper: for reports."""
    store = get_store()
    return store.primary if isinstance(store, FailoverStore) else store


def get_breaker(name: str) -> Breaker:
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    # The saved overrides are read under this circuit's own lock, not the global one: a slow
    # or dead database holds up only the threads that need this circuit, and of a crowd of
    # them only one queries it (the rest find the breaker made).
    with _lock:
        making = _making.setdefault(name, threading.Lock())
    with making:
        breaker = _breakers.get(name)
        if breaker is not None:
            return breaker
        store = get_store()
        _building.names = {*building_names(), name}
        try:
            base = settings.circuit_config(name)
            # A shared store hands the saved overrides to every worker with the circuit's
            # state (seeded from its row when it has lost them): ask it, not the database,
            # which may be the very one this circuit guards, down, or stalled.
            overrides = {} if store.shared else _overrides(name)
            try:
                config = Config.from_mapping(base | overrides)
            except ValueError as err:  # saved before validation, or settings changed since
                logger.error("Circuit %s: ignoring invalid overrides (%s).", name, err)
                config, overrides = Config.from_mapping(base), {}
            breaker = Breaker(name, config, store, snapshot_ttl=settings.SNAPSHOT_TTL,
                              base_config=base, overrides=overrides)
            if store.shared:
                breaker.load_overrides()
                if not getattr(store, "available", True):
                    # The store could not tell (unreachable): the row, as for a store of
                    # this process's own (none while the database is known down).
                    breaker.use_overrides(_overrides(name))
        finally:
            _building.names = building_names() - {name}
        with _lock:
            _breakers[name] = breaker
    return breaker


def building_names() -> set[str]:
    """The circuits whose breakers this thread is making right now (reading their saved
    overrides): a query guard on
    the database those are read from must let that read through, or making the breaker
    would wait for itself."""
    return set(getattr(_building, "names", ()))


def existing(name: str) -> Breaker | None:
    """The breaker of ``name`` if this process has built it, without building it."""
    return _breakers.get(name)


def circuit_config(name: str) -> dict[str, Any]:
    """The breaker settings in effect for ``name`` in this process, without making its
    breaker: the breaker's (the overrides saved on the circuit included) once it is made,
    else the settings'."""
    breaker = existing(name)
    return asdict(breaker.config) if breaker is not None else settings.circuit_config(name)


def swap_breaker(name: str, breaker: Breaker | None) -> Breaker | None:
    """Put ``breaker`` in place for ``name`` (``None``: forget it); returns the one it
    replaces. For test helpers such as :class:`resilience_crm.testutils.override_circuit`."""
    with _lock:
        previous = _breakers.pop(name, None)
        if breaker is not None:
            _breakers[name] = breaker
    return previous


def clear() -> None:
    """Forget every breaker and the store; the next use rebuilds them from settings."""
    global _store
    with _lock:
        _breakers.clear()
        _store = None


def _overrides(name: str) -> dict[str, Any]:
    """Settings an operator saved on the circuit's row in the admin, for a breaker whose
    store is this process's own; none if the database is down."""
    if flusher.database_down():  # known to be down: do not wait for it
        return {}
    try:
        config = Circuit.objects.filter(name=name).values_list("config", flat=True).first()
    except Exception as err:  # the database may be the thing that is down
        logger.warning("Circuit %s: could not read overrides from the database (%s).", name, err)
        return {}
    return dict(config or {})


def _after_fork_in_child() -> None:
    """A forked worker must not share its parent's pending counts or snapshots. The lock is
    replaced, not taken: another thread of the parent may have held it at the fork."""
    global _lock, _store
    _lock = threading.RLock()
    _breakers.clear()
    _making.clear()
    _store = None


os.register_at_fork(after_in_child=_after_fork_in_child)
