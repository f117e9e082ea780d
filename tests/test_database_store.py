"""The database store: the embedded default, and the store for deployments without Redis."""

from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest
from django.db import connections

from resilience_crm.breakers import machine as core
from resilience_crm.breakers.stores.base import Step
from resilience_crm.breakers.stores.database import DatabaseStore
from resilience_crm.models import Circuit

CONFIG = core.Config.from_mapping(
    {"failure_threshold": 5, "failure_rate_threshold": 0, "reset_timeout": 1,
     "max_reset_timeout": 4}
).as_step_config()


@pytest.mark.django_db
def test_steps_live_in_the_circuit_row():
    store = DatabaseStore()
    for _ in range(5):
        result = store.step(Step("db.circuit", CONFIG, 0.5, [[0, core.FAILURE, 1, ""]]))
    assert result["state"] == core.OPEN
    row = Circuit.objects.get(name="db.circuit")
    assert (row.state, row.generation, row.live["state"]) == (core.OPEN, 1, core.OPEN)
    assert row.version == 5

    store.clear("db.circuit")
    result = store.step(Step("db.circuit", CONFIG, 0.5))
    assert (result["state"], result["gen"]) == (core.CLOSED, 1)


def _hammer(index, barrier, errors):
    try:
        connections.close_all()
        store = DatabaseStore()
        barrier.wait()
        for _ in range(10):
            store.step(Step("db.race", CONFIG, 0.5, [[0, core.FAILURE, 1, ""]]))
    except BaseException:
        errors.put(traceback.format_exc())
        os._exit(1)
    os._exit(0)


@pytest.mark.postgres
def test_compare_and_set_counts_exactly_under_concurrency(postgres, transactional_db):
    """Four processes race 40 failures; the trip counts exactly five and no step is lost."""
    ctx = multiprocessing.get_context("fork")
    DatabaseStore().step(Step("db.race", CONFIG, 0.5))  # create the row
    connections.close_all()
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    processes = [ctx.Process(target=_hammer, args=(i, barrier, errors)) for i in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    row = Circuit.objects.get(name="db.race")
    assert row.version == 41  # the creating step and every one of the 40 racing steps
    assert row.generation == 1
    assert core.step(row.live, CONFIG, row.live["opened_at"], 0.5)[1]["failures"] == 5
