"""``manage.py resilience_drill`` against the real PostgreSQL and Redis: it cuts a real proxy
in front of the test database, and what it reports is checked against what happened."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django_redis import get_redis_connection
from rest_framework.authtoken.models import Token

from crm_demo.crm import drill
from crm_demo.crm.drill import CIRCUITS, USERNAME
from crm_demo.crm.models import Contact
from resilience_crm import get_breaker
from resilience_crm.admin import incidents
from resilience_crm.breakers import machine as core
from resilience_crm.models import CircuitEvent, CircuitMetric, QueuedWrite
from tests.demo_server import SETTINGS
from tests.replica import Pair
from tests.sentry_server import received

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.django_db(transaction=True)
def test_the_drill_rides_out_a_real_outage(postgres, redis_settings, sentry):
    out = io.StringIO()
    call_command("resilience_drill", "--seconds", "4", "--keep", stdout=out)
    text = out.getvalue()

    assert text.splitlines()[0].startswith("Database: postgresql ")  # where it works
    assert "CUT: the proxy closed every database connection" in text
    assert "GET /api/contacts/ -> 200 stale" in text
    assert "-> 202" in text
    assert "FAIL" not in text
    assert "The drill passed" in text

    # The write queued during the outage was applied once, and its contact is there once.
    write = QueuedWrite.objects.get(idempotency_key__endswith="-queued")
    assert write.state == QueuedWrite.State.APPLIED
    assert Contact.objects.filter(email=write.payload["email"]).count() == 1
    # The circuits went open for real (audited) and are closed again.
    assert CircuitEvent.objects.filter(circuit__name="crm.read", to_state=core.OPEN).exists()
    for name in CIRCUITS:
        assert get_breaker(name).state == core.CLOSED
    # The open alert reached Sentry.
    messages = [event.get("message") or event.get("logentry", {}).get("message", "")
                for event in received(sentry, at_least=1)]
    assert any(message.startswith("Circuit crm.read opened") for message in messages), messages
    # It said it was a drill: its transitions and its alerts are tagged with its run.
    run_id = write.idempotency_key.split(":")[-1].removesuffix("-queued")
    assert f"this is drill {run_id}" in text
    opened = CircuitEvent.objects.filter(circuit__name="crm.read", to_state=core.OPEN).first()
    assert opened.reason.endswith(f"[drill {run_id}]")
    # One drill reads as one incident per circuit that opened, marked as the drill's.
    found = incidents.recent(CIRCUITS, limit=20)
    assert found and sorted(i.circuit for i in found) == sorted({i.circuit for i in found})
    assert {i.drill for i in found} == {run_id} and not any(i.ongoing for i in found)
    tags = [event.get("tags") or {} for event in received(sentry, at_least=1)]
    read_opened = [t for t in tags if (t.get("circuit"), t.get("circuit_state")) == (
        "crm.read", core.OPEN)]
    assert read_opened and all(t.get("drill") == run_id for t in read_opened), tags
    # Its call metrics are written as it ends, failures included: the dashboard's charts
    # and the metric rows show the outage without waiting for the background writer.
    assert "wrote the drill's circuit events and call metrics" in text
    counted = CircuitMetric.objects.filter(circuit__name="crm.read").aggregate(
        failures=Sum("failures"), rejected=Sum("rejected"))
    assert counted["failures"] and counted["failures"] > 0, counted
    # The drill's API token does not outlive it.
    assert not Token.objects.filter(user__username=USERNAME).exists()


@pytest.mark.django_db(transaction=True)
def test_without_sentry_the_alert_is_a_log_line(postgres, redis_settings, caplog):
    caplog.set_level(logging.WARNING, logger="crm_demo.drill")
    call_command("resilience_drill", "--seconds", "4", "--quiet", stdout=io.StringIO())

    assert any(r.getMessage().startswith("ALERT Circuit") for r in caplog.records)
    assert not Contact.objects.filter(email__endswith=".drill.invalid").exists()


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_drill_refuses_sqlite_and_says_why(settings):
    settings.DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    with pytest.raises(CommandError, match="SQLite file has no network to cut"):
        call_command("resilience_drill", stdout=io.StringIO())


def test_the_drill_needs_redis(postgres, settings):
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "default"}  # the local-memory cache
    with pytest.raises(CommandError, match="needs Redis"):
        call_command("resilience_drill", stdout=io.StringIO())


def test_seconds_must_leave_time_for_the_outage():
    with pytest.raises(CommandError, match="at least 3"):
        call_command("resilience_drill", "--seconds", "1", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_a_promised_step_that_does_not_happen_fails_the_drill(postgres, redis_settings,
                                                              monkeypatch):
    # Nothing cached may be served once it is no longer fresh: the outage's reads fail.
    redis_settings.RESILIENCE_CRM = {**redis_settings.RESILIENCE_CRM, "FALLBACK_STALE_TTL": 0}
    monkeypatch.setattr(drill, "OUTAGE_GRACE", 0)  # no waiting for what cannot come
    out = io.StringIO()
    with pytest.raises(CommandError, match="did not see every promised step: stale"):
        call_command("resilience_drill", "--seconds", "3", stdout=out)

    assert "FAIL reads are served from the cache, labelled stale" in out.getvalue()
    # It still cleaned up after itself.
    for name in CIRCUITS:
        assert get_breaker(name).state == core.CLOSED
    assert not Token.objects.filter(user__username=USERNAME).exists()


@pytest.mark.django_db(transaction=True)
def test_a_circuit_an_operator_holds_is_left_alone(postgres, redis_settings):
    get_breaker("crm.write").force(core.FORCED_OPEN, reason="maintenance")

    with pytest.raises(CommandError, match="crm.write is forced_open"):
        call_command("resilience_drill", stdout=io.StringIO())
    assert get_breaker("crm.write").state == core.FORCED_OPEN


ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def demo_database(pair: Pair) -> Iterator[str]:
    """A database of its own on the streaming pair's primary (the replica follows it), its
    name; dropped afterwards."""
    name = f"drill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", port=pair.primary_port, user="postgres",
                         dbname="postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@contextlib.contextmanager
def keys_removed(prefix: str) -> Iterator[None]:
    """The demo's keys under ``prefix`` (circuits, queue, spool) are deleted afterwards."""
    try:
        yield
    finally:
        redis = get_redis_connection("redis")
        keys = list(redis.scan_iter(match=f"{prefix}*"))
        if keys:
            redis.delete(*keys)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.django_db(transaction=True)
def test_with_a_replica_the_drill_reads_from_it_then_from_the_stale_cache(
        streaming_replica, redis_url):
    """The demo with ``DATABASE_REPLICA_URL`` on a real streaming replica: with the primary
    cut, reads come from the replica, labelled with its lag; with the replica cut too, from
    the stale cache."""
    with demo_database(streaming_replica) as name, keys_removed(f"rcrm-drill-{name}"):
        url = "postgres://postgres@127.0.0.1:{}/" + name
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS,
               "DATABASE_URL": url.format(streaming_replica.primary_port),
               "DATABASE_REPLICA_URL": url.format(streaming_replica.replica_port),
               "REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"rcrm-drill-{name}",
               "DJANGO_SECRET_KEY": "drill-test-" + uuid.uuid4().hex}
        migrated = manage(env, "migrate", "--noinput")
        assert migrated.returncode == 0, migrated.stderr
        done = manage(env, "resilience_drill", "--seconds", "6")
    text = done.stdout
    assert done.returncode == 0, text + done.stderr
    assert "the read replica 'replica'" in text
    cut_replicas = text.index("CUT the replicas too")
    primary_cut = text[text.index("CUT: the proxy"):cut_replicas]
    assert "GET /api/contacts/ -> 200 replica, Age " in primary_cut
    assert "200 stale" not in primary_cut  # the replica answers before the stale cache
    assert "GET /api/contacts/ -> 200 stale, Age " in text[cut_replicas:]
    assert "ok   with the primary cut, reads are served from the replica, labelled with " \
           "its lag: 200 with X-Resilience-Fallback: replica, Age 0s" in text
    assert "FAIL" not in text
    assert "The drill passed" in text
