"""The health endpoints: ``live`` answers without touching anything; ``ready`` probes the
database and the cache, scores what it finds and lists every circuit."""

from __future__ import annotations

import pytest
from django.db import connections
from django.urls import reverse

from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.observability.health import PENALTIES
from tests.databases import extra_database

pytestmark = pytest.mark.django_db

LIVE = reverse("resilience:health-live")
READY = reverse("resilience:health-ready")
CIRCUITS = ("crm.read", "crm.write", "crm.rpc", "crm.auth")
TOKEN = "monitoring-secret"


@pytest.fixture
def database_down(settings):
    """The app's tables routed to a database alias ``"down"``: PostgreSQL on a port nothing
    listens on."""
    down = connections.configure_settings({
        "default": {},
        "down": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": "1",
            "NAME": "resilience_crm",
            "USER": "postgres",
            "OPTIONS": {"connect_timeout": 1},
        },
    })["down"]
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "down", "MONITORING_TOKEN": TOKEN}
    with extra_database("down", down):
        yield


def assert_never_cached(response) -> None:
    cache_control = {part.strip() for part in response["Cache-Control"].split(",")}
    assert {"no-cache", "no-store", "must-revalidate", "max-age=0"} <= cache_control
    assert "Expires" in response


def test_live_answers_without_a_query(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get(LIVE)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_on_a_healthy_setup(admin_client):
    response = admin_client.get(READY)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["score"] == 100
    # The four default circuits and the query guard's.
    assert body["circuits"] == {name: {"state": core.CLOSED} for name in (*CIRCUITS, "crm.db")}
    assert body["queue"] == {"pending": 0, "dead": 0, "oldest_pending_s": 0, "in_redis": 0}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["cache"]["ok"] is True


def test_forced_open_circuit_degrades_readiness(client):
    registry.get_breaker("crm.write").force(core.FORCED_OPEN)

    response = client.get(READY)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["score"] == 100 - PENALTIES["open_circuit"]
    assert body["circuits"]["crm.write"] == {"state": core.FORCED_OPEN}
    assert body["circuits"]["crm.read"] == {"state": core.CLOSED}


@pytest.mark.parametrize("url", [LIVE, READY])
def test_health_answers_are_never_cached(client, url):
    response = client.get(url)

    assert response.status_code == 200
    assert_never_cached(response)


@pytest.mark.parametrize("url", [LIVE, READY])
def test_health_endpoints_reject_post(client, url):
    response = client.post(url)

    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert_never_cached(response)


@pytest.mark.django_db(transaction=True)  # the probes connect from their own threads
def test_ready_with_the_database_down_is_unavailable(client, database_down):
    response = client.get(READY, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert body["checks"]["cache"]["ok"] is True
    assert body["queue"] is None
    # The database is also the circuits' store here, so each worker runs its own breakers.
    assert body["circuits"] == {name: {"state": core.CLOSED, "store": "local"}
                                for name in CIRCUITS}
    assert body["score"] == 100 - PENALTIES["database"] - len(CIRCUITS) * PENALTIES["local_store"]
    assert client.get(LIVE).json() == {"status": "ok"}


def test_an_unimportable_exception_path_never_makes_a_circuit_or_ready_raise(client, settings,
                                                                           caplog):
    settings.RESILIENCE_CRM = {"CIRCUITS": {"crm.read": {
        "record_exceptions": ["no.such.module.Error", "builtins.ConnectionError"],
        "ignore_exceptions": ["builtins.not_an_exception"]}}}

    breaker = registry.get_breaker("crm.read")
    assert breaker.call(lambda: "answer") == "answer"
    with pytest.raises(ConnectionError):  # the importable path still counts
        breaker.call(_refused)
    response = client.get(READY)

    assert response.status_code == 200
    assert response.json()["circuits"]["crm.read"] == {"state": core.CLOSED}
    assert "ignoring exception path 'no.such.module.Error'" in caplog.text
    assert breaker.snapshot()["failures"] == 1


def _refused():
    raise ConnectionError("refused")
