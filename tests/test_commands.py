"""The management commands: status, reset, force and cleanup."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from model_bakery import baker

from resilience_crm.breakers import control, registry
from resilience_crm.breakers import machine as core
from resilience_crm.management import where
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric, SpoolReceipt

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    """The command's output after its first line, which says where it works."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    first, _, rest = out.getvalue().partition("\n")
    if "--json" in args:  # the line goes to stderr, the JSON stays parseable
        first, rest = err.getvalue().strip(), out.getvalue()
    assert first == where.line()
    return rest


def test_status_lists_every_circuit_with_its_live_state():
    breaker = registry.get_breaker("crm.write")
    breaker.record(breaker.allow(), core.FAILURE)
    registry.get_breaker("crm.rpc").force(core.FORCED_OPEN)

    lines = run("resilience_status").splitlines()

    assert lines[0].startswith("CIRCUIT")
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert {"crm.read", "crm.write", "crm.rpc", "crm.auth"} <= set(rows)
    assert rows["crm.write"][1:6] == ["closed", "0", "1", "1", "100%"]
    assert rows["crm.rpc"][1] == "forced_open"


def test_status_json_carries_state_counts_and_who_forced():
    run("resilience_force", "crm.auth", "forced_closed", "--reason", "login storm")

    body = json.loads(run("resilience_status", "--json"))

    assert body["store"] == "resilience_crm.breakers.stores.database.DatabaseStore"
    assert body["pending_events"] == 0
    auth = body["circuits"]["crm.auth"]
    assert (auth["state"], auth["generation"], auth["store"]) == ("forced_closed", 1, "shared")
    assert auth["forced"] == {"state": "forced_closed", "reason": "login storm",
                              "by": f"{getpass.getuser()} (command)", "until": None}
    assert body["circuits"]["crm.read"]["forced"] is None


def test_status_includes_circuits_that_only_have_a_row():
    Circuit.objects.create(name="billing.api")

    body = json.loads(run("resilience_status", "--json"))

    assert body["circuits"]["billing.api"]["state"] == "closed"


def test_reset_closes_named_circuits_and_audits_as_command():
    for name in ("crm.read", "crm.write"):
        registry.get_breaker(name).force(core.FORCED_OPEN)

    out = run("resilience_reset", "crm.read", "--reason", "db back")

    assert "Reset crm.read." in out
    assert registry.get_breaker("crm.read").state == core.CLOSED
    assert registry.get_breaker("crm.write").state == core.FORCED_OPEN
    event = CircuitEvent.objects.get(circuit__name="crm.read", to_state=core.CLOSED)
    assert (event.source, event.reason, event.actor) == ("command", "db back", None)


def test_reset_all_closes_what_is_not_closed_and_leaves_the_rest_alone():
    for name in ("crm.read", "crm.auth"):
        registry.get_breaker(name).force(core.DISABLED)
    generations = {name: registry.get_breaker(name).snapshot()["generation"]
                   for name in ("crm.write", "crm.rpc", "crm.db")}

    out = run("resilience_reset", "--all")

    # Every circuit: protected's four, and the query guard's on the default database.
    circuits = ["crm.read", "crm.write", "crm.rpc", "crm.auth", "crm.db"]
    assert {name: registry.get_breaker(name).state for name in circuits} == dict.fromkeys(
        circuits, core.CLOSED)
    closed = CircuitEvent.objects.filter(source="command", to_state=core.CLOSED)
    assert sorted(closed.values_list("circuit__name", flat=True)) == ["crm.auth", "crm.read"]
    assert not CircuitEvent.objects.filter(from_state=core.CLOSED, to_state=core.CLOSED).exists()
    assert {name: registry.get_breaker(name).snapshot()["generation"]
            for name in generations} == generations
    left = out.split("Already closed, left alone: ", 1)[1].split(".\n", 1)[0]
    assert sorted(left.rstrip(".").split(", ")) == ["crm.db", "crm.rpc", "crm.write"]


def test_reset_by_name_resets_a_closed_circuit_too():
    """Named, a closed circuit is reset: its counts are forgotten, as asked."""
    breaker = registry.get_breaker("crm.write")
    breaker.record(breaker.allow(), core.FAILURE)

    run("resilience_reset", "crm.write")

    assert registry.get_breaker("crm.write").snapshot()["failures"] == 0


def test_status_names_who_forced_a_circuit():
    run("resilience_force", "crm.read", "forced_open", "--reason", "migration")
    control.steer("crm.rpc", core.FORCED_OPEN, reason="from code")

    lines = run("resilience_status").splitlines()

    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["crm.read"].endswith(f"by {getpass.getuser()} (command): migration")
    assert rows["crm.rpc"].endswith("by code: from code")
    assert "?" not in "".join(lines)


@pytest.mark.parametrize("args, message", [
    ((), "Name the circuits to reset, or pass --all."),
    (("crm.read", "--all"), "Name the circuits to reset, or pass --all."),
    (("crm.nope",), "Unknown circuit(s): crm.nope."),
])
def test_reset_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run("resilience_reset", *args)
    assert not CircuitEvent.objects.exists()


def test_force_holds_the_state_and_records_it():
    out = run("resilience_force", "crm.read", "forced_open", "--reason", "migration")

    assert out.strip() == "crm.read is now forced_open."
    assert registry.get_breaker("crm.read").state == core.FORCED_OPEN
    circuit = Circuit.objects.get(name="crm.read")
    assert (circuit.state, circuit.forced_state, circuit.forced_reason) == (
        core.FORCED_OPEN, core.FORCED_OPEN, "migration")
    event = circuit.events.get()
    assert (event.source, event.to_state) == ("command", core.FORCED_OPEN)


def test_force_until_a_duration():
    run("resilience_force", "crm.read", "disabled", "--until", "1h")

    until = Circuit.objects.get(name="crm.read").forced_until
    expected = timezone.now() + timedelta(hours=1)
    assert abs((until - expected).total_seconds()) < 60
    assert registry.get_breaker("crm.read").snapshot()["until"] == until


def test_force_until_an_iso_time():
    when = (timezone.now() + timedelta(days=2)).replace(microsecond=0)

    run("resilience_force", "crm.rpc", "metrics_only", "--until", when.isoformat())

    assert Circuit.objects.get(name="crm.rpc").forced_until == when


def test_force_closed_state_is_a_reset():
    run("resilience_force", "crm.read", "forced_open")
    run("resilience_force", "crm.read", "closed")

    circuit = Circuit.objects.get(name="crm.read")
    assert (circuit.state, circuit.forced_state) == (core.CLOSED, "")


@pytest.mark.parametrize("args, message", [
    (("crm.nope", "forced_open"), "Unknown circuit 'crm.nope'"),
    (("crm.read", "forced_open", "--until", "soon"), "neither a duration"),
    (("crm.read", "forced_open", "--until", "2001-01-01T00:00:00Z"), "not in the future"),
])
def test_force_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        run("resilience_force", *args)
    assert registry.get_breaker("crm.read").state == core.CLOSED


def test_force_refuses_an_unknown_state():
    with pytest.raises(CommandError, match="invalid choice: 'half_open'"):
        run("resilience_force", "crm.read", "half_open")


@pytest.fixture
def aged_records():
    circuit = Circuit.objects.get(name="crm.read")
    now = timezone.now()
    for age, gen in ((40, 1), (10, 2)):
        baker.make(CircuitEvent, circuit=circuit, generation=gen, from_state="closed",
                   to_state="open", created_at=now - timedelta(days=age))
        baker.make(CircuitMetric, circuit=circuit, bucket=now - timedelta(days=age))
        baker.make(SpoolReceipt, batch=f"batch-{age}", created_at=now - timedelta(days=age))
    return circuit


def test_cleanup_deletes_past_retention(aged_records, settings):
    settings.RESILIENCE_CRM = {"METRICS_RETENTION_DAYS": 30}

    out = run("resilience_cleanup")

    assert "Deleted 1 circuit events older than 30 days." in out
    assert "Deleted 1 metric buckets older than 30 days." in out
    assert "Deleted 1 spool receipts older than 30 days." in out
    assert list(aged_records.events.values_list("generation", flat=True)) == [2]
    assert list(SpoolReceipt.objects.values_list("batch", flat=True)) == ["batch-10"]
    assert aged_records.metrics.count() == 1


def test_cleanup_dry_run_and_days_option(aged_records):
    out = run("resilience_cleanup", "--days", "5", "--dry-run")

    assert "Would delete 2 circuit events older than 5 days." in out
    assert aged_records.events.count() == 2

    run("resilience_cleanup", "--days", "5")
    assert aged_records.events.count() == 0
    assert aged_records.metrics.count() == 0


def test_cleanup_refuses_a_retention_below_one_day():
    with pytest.raises(CommandError, match="whole number of days >= 1"):
        run("resilience_cleanup", "--days", "0")


@pytest.mark.parametrize("command", ["resilience_status", "resilience_cleanup",
                                     "resilience_replay", "resilience_limits", "seed_demo"])
def test_every_command_says_first_which_database_and_store(command, settings):
    out = io.StringIO()
    args = {"seed_demo": ["--no-progress", "--contacts", "0", "--conversations", "0"],
            "resilience_limits": ["203.0.113.5"]}.get(command, [])
    with contextlib.suppress(CommandError, SystemExit):
        call_command(command, *args, stdout=out)
    db = settings.DATABASES["default"]
    assert out.getvalue().splitlines()[0] == (
        f"Database: postgresql {db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']} "
        "· store: DatabaseStore")


def test_the_first_line_names_redis_without_its_password(settings):
    settings.CACHES = {**settings.CACHES, "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://:s3cret@127.0.0.1:1/0"}}
    settings.RESILIENCE_CRM = {"STORE": "memory"}

    assert where.store() == "MemoryStore (redis://:***@127.0.0.1:1/0)"
