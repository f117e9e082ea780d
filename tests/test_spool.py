"""What the flusher cannot write while the database is down waits in the shared store
(``resilience_crm.spool``): a process that ends during the outage leaves its events
and
metrics there, within a short bound even when the database hangs, and they reach the
database exactly once, however many processes write them at once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import Sum

from resilience_crm import buckets, flusher, spool
from resilience_crm.breakers import events
from resilience_crm.models import CircuitEvent, CircuitMetric
from tests.databases import CLOSED_PORT, database_url
from tests.gunicorn_server import ROOT
from tests.processes import ctx, run_processes
from tests.proxy import Proxy

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

#: What a process records, then ends at once, its database unreachable.
RECORDS = textwrap.dedent("""
    import django
    django.setup()
    from django.test.utils import override_settings
    override_settings(RESILIENCE_CRM={"STORE": "memory", "CACHE_ALIAS": "redis"}).enable()
    from resilience_crm.breakers import events
    from resilience_crm import metrics
    metrics.inc("calls", 3, circuit="crm.read", outcome="failure")
    events.record_transition("crm.read", "closed", "open", 7, reason="the database left")
    events.record_transition("crm.read", "open", "closed", 3, source="local")
""")
PROCESSES = 6


@pytest.fixture
def spooled(redis_settings, postgres, transactional_db):
    redis_settings.RESILIENCE_CRM = {"STORE": "memory", "CACHE_ALIAS": "redis"}
    return redis_settings


def end_a_process_that_saw(database_url_):
    """Run :data:`RECORDS` in a new process whose database is at ``database_url_``; it must
    end by itself, soon."""
    env = {**os.environ, "DATABASE_URL": database_url_,
           "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RECORDS], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def assert_written_once():
    rows = CircuitEvent.objects.filter(circuit__name="crm.read")
    assert sorted(rows.values_list("generation", "to_state", "source")) == [
        (3, "closed", "local"), (7, "open", "breaker")]
    counted = CircuitMetric.objects.filter(circuit__name="crm.read").aggregate(
        calls=Sum("calls"), failures=Sum("failures"))
    assert counted == {"calls": 3, "failures": 3}


@pytest.mark.parametrize("fault", ["refused", "stalled"])
def test_a_process_ending_while_the_database_is_down_leaves_its_records_to_the_next(
        spooled, fault):
    db = connection.settings_dict
    with Proxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        proxy.stalled = True  # connections accepted, never answered: only a bound ends them
        port = proxy.port if fault == "stalled" else CLOSED_PORT
        end_a_process_that_saw(database_url(db, HOST="127.0.0.1", PORT=port))
    status = io.StringIO()
    call_command("resilience_status", "--json", stdout=status)
    spooled = json.loads(status.getvalue())["spooled"]
    assert spooled["events"] >= 1
    assert spooled["metrics"] >= 1

    flusher.run_tasks()  # this process finds the database answering

    assert_written_once()
    assert spool.length(events.KIND) == spool.length(buckets.KIND) == 0


def test_processes_writing_the_spool_at_once_write_each_batch_once(spooled):
    db = connection.settings_dict
    end_a_process_that_saw(database_url(db, HOST="127.0.0.1", PORT=CLOSED_PORT))
    connections.close_all()  # the children open their own

    def write(index, barrier):
        barrier.wait(timeout=30)
        flusher.run_tasks()
        connections.close_all()  # before os._exit: no session left behind on the server

    run_processes(write, ctx.Barrier(PROCESSES), count=PROCESSES)

    assert_written_once()
    assert spool.length(events.KIND) == spool.length(buckets.KIND) == 0


def test_a_batch_the_database_refuses_does_not_hold_up_the_others(spooled, caplog):
    minute = time.time() // 60
    too_many = {"minute": minute, "circuit": "crm.read", "columns": {"failures": 2**70}}
    spool.keep(buckets.KIND, [too_many])
    spool.keep(buckets.KIND, [{"minute": minute, "circuit": "crm.read",
                               "columns": {"failures": 3}}])

    flusher.run_tasks()

    counted = CircuitMetric.objects.filter(circuit__name="crm.read").aggregate(
        failures=Sum("failures"))
    assert counted == {"failures": 3}
    assert spool.length(buckets.KIND) == 0
    assert "Dropping a batch of metrics from the spool" in caplog.text
