"""``DATABASE_ALIAS``: the supported layout is a second alias of the same database (its own
connection, outside the requests' transactions; foreign keys to users still in one
database), tested against the real PostgreSQL. ``post_migrate`` creates rows only where the
router puts the app's tables."""

from __future__ import annotations

import contextlib

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections, transaction
from model_bakery import baker

from resilience_crm import get_breaker
from resilience_crm.breakers import events
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.control import steer
from resilience_crm.models import Circuit, CircuitEvent, Tier
from resilience_crm.receivers import create_rows
from tests.databases import APP_ALIAS, database_alias
from tests.failing import boom

pytestmark = pytest.mark.postgres
CIRCUIT = "test.alias"


@pytest.fixture
def second_alias(request, postgres, settings):
    """The app's tables on ``APP_ALIAS``, the test database through a connection of its own;
    requests' transactions (``ATOMIC_REQUESTS``) on ``default``."""
    settings.RESILIENCE_CRM = {
        "STORE": "database",
        "CIRCUITS": {CIRCUIT: {"failure_threshold": 2, "failure_rate_threshold": 0}},
    }
    with database_alias(request, settings):
        connections.settings["default"]["ATOMIC_REQUESTS"] = True
        try:
            yield
        finally:
            connections.settings["default"]["ATOMIC_REQUESTS"] = False


def test_the_audit_trail_and_live_state_outlive_the_requests_rollback(second_alias):
    user = baker.make(get_user_model())  # on default, committed (a transactional test)
    breaker = get_breaker(CIRCUIT)

    with contextlib.suppress(ConnectionError), transaction.atomic(using="default"):
        for _ in range(2):
            with contextlib.suppress(ConnectionError):
                breaker.call(boom)
        steer(CIRCUIT, core.FORCED_OPEN, actor=user, reason="maintenance", source="admin")
        raise ConnectionError("the view fails; ATOMIC_REQUESTS rolls its transaction back")

    assert events.pending_count() == 0
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.forced_state, circuit.forced_by) == (
        core.FORCED_OPEN, core.FORCED_OPEN, user)
    assert list(CircuitEvent.objects.filter(circuit=circuit).order_by("generation")
                .values_list("to_state", "actor")) == [("open", None),
                                                       ("forced_open", user.pk)]
    assert breaker.snapshot()["state"] == core.FORCED_OPEN  # the database store kept it


def test_migrate_on_either_alias_finds_the_tables_in_place(second_alias):
    for alias in ("default", APP_ALIAS):
        call_command("migrate", database=alias, verbosity=0, interactive=False)
    assert Circuit.objects.using(APP_ALIAS).filter(name="crm.read").exists()


def test_post_migrate_creates_rows_only_where_the_router_puts_the_tables(database_down):
    """The app's tables live on a database that is down; migrating ``default`` must not put
    circuit or tier rows there (nor try the one that is down)."""
    Circuit.objects.using("default").all().delete()
    Tier.objects.using("default").all().delete()

    create_rows(sender=apps.get_app_config("resilience_crm"), using="default")

    assert not Circuit.objects.using("default").exists()
    assert not Tier.objects.using("default").exists()


def test_post_migrate_creates_rows_without_a_router(transactional_db):
    Circuit.objects.all().delete()

    create_rows(sender=apps.get_app_config("resilience_crm"), using="default")

    assert set(Circuit.objects.values_list("name", flat=True)) >= {"crm.read", "crm.write"}
