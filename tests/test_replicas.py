"""Read replicas as a fallback tier, on a real streaming replica (tests/replica.py): with the
primary cut by a fault proxy, a read gets fresh data from the replica, labelled with its
lag; a replica further behind than ``MAX_REPLICA_LAG`` is skipped; no write, and no
migration, goes to a replica."""

from __future__ import annotations

import pytest
from django.db import connections, router

from crm_demo.crm.faults import FaultProxy
from crm_demo.crm.models import Platform
from resilience_crm import get_breaker
from resilience_crm.exceptions import ResilienceError
from resilience_crm.provider import labels, replicas
from resilience_crm.provider.facade import protected
from tests.databases import extra_database
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

PRIMARY, REPLICA, DIRECT = "rprimary", "rreplica", "rdirect"


class OnTheTestPrimary:
    """The project's own router, after ResilienceRouter: platforms live on the test pair
    (read through the proxy, written directly)."""

    def db_for_read(self, model, **hints):
        return PRIMARY if model is Platform else None

    def db_for_write(self, model, **hints):
        return DIRECT if model is Platform else None


@pytest.fixture(scope="module")
def pair(streaming_replica, django_db_blocker):
    """The pair's aliases, a ``platform`` table on the primary (and by replication on the
    replica), and the proxy in front of the primary."""
    with FaultProxy("127.0.0.1", streaming_replica.primary_port) as proxy, \
            extra_database(PRIMARY, streaming_replica.settings(proxy.port)), \
            extra_database(REPLICA, streaming_replica.settings(
                streaming_replica.replica_port)), \
            extra_database(DIRECT, streaming_replica.settings(
                streaming_replica.primary_port)):
        with django_db_blocker.unblock():
            with connections[DIRECT].schema_editor() as editor:
                editor.create_model(Platform)
            # On a loaded machine the replica may replay the table after the first test
            # asks it for a row.
            wait_until(lambda: Platform._meta.db_table in
                       connections[REPLICA].introspection.table_names(),
                       "the replica replays the table")
        try:
            yield proxy
        finally:
            with django_db_blocker.unblock():
                with connections[DIRECT].schema_editor() as editor:
                    editor.delete_model(Platform)
                for alias in (PRIMARY, REPLICA, DIRECT):
                    connections[alias].close()


@pytest.fixture
def on_pair(pair, settings):
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter",
                                 "tests.test_replicas.OnTheTestPrimary"]
    settings.RESILIENCE_CRM = {"STORE": "memory", "READ_REPLICAS": [REPLICA],
                               "MAX_REPLICA_LAG": 0.5}
    labels.begin()
    yield pair
    pair.restore()
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")


def names() -> list[str]:
    return list(Platform.objects.order_by("name").values_list("name", flat=True))


def on_replica(name: str) -> bool:
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM crm_platform WHERE name = %s", [name])
        return bool(cursor.fetchone()[0])


def add(name: str) -> None:
    Platform.objects.create(name=name, kind="email")


def test_a_healthy_primary_answers_unlabelled(on_pair):
    add("healthy")
    assert "healthy" in protected.read("platforms:healthy", names, using=PRIMARY)
    assert labels.headers() == {}


def test_with_the_primary_cut_the_replica_answers_fresh_data_labelled(on_pair):
    add("before the cut")
    on_pair.cut()
    add("during the cut")  # straight to the primary: the replica streams it
    wait_until(lambda: on_replica("during the cut"), "the replica replays the row")
    value = protected.read("platforms:cut", names, using=PRIMARY)
    assert {"before the cut", "during the cut"} <= set(value)
    assert labels.headers() == {labels.FALLBACK_HEADER: "replica", "Age": "0"}
    assert get_breaker(replicas.circuit_of(REPLICA)).snapshot()["failures"] == 0


def test_an_open_primary_circuit_goes_to_the_replica_at_once(on_pair):
    add("open")
    wait_until(lambda: on_replica("open"), "the replica replays the row")
    get_breaker("crm.read").force("forced_open", reason="drill")
    connections[PRIMARY].close()
    asked = on_pair.connections
    assert "open" in protected.read("platforms:open", names, using=PRIMARY)
    assert labels.headers()[labels.FALLBACK_HEADER] == "replica"
    assert on_pair.connections == asked  # the primary was never asked


def test_a_replica_too_far_behind_is_skipped(on_pair):
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    add("while paused")
    wait_until(lambda: replicas.lag(REPLICA) > 0.5, "the replica falls behind")
    on_pair.cut()
    value = protected.read("platforms:paused", names, using=PRIMARY,
                           fallback=lambda: ["degraded"])
    assert value == ["degraded"]
    assert labels.headers() == {labels.FALLBACK_HEADER: "degraded"}
    # Behind is not broken: the replica's circuit counted nothing.
    assert get_breaker(replicas.circuit_of(REPLICA)).snapshot()["failures"] == 0


def kinds(wanted: list[str]) -> dict[str, str]:
    return dict(Platform.objects.filter(name__in=wanted).values_list("name", "kind"))


def test_load_many_with_the_primary_cut_asks_the_replica(on_pair):
    add("many-a")
    add("many-b")
    on_pair.cut()
    add("many-c")  # straight to the primary: the replica streams it
    wait_until(lambda: on_replica("many-c"), "the replica replays the row")
    found = protected.load_many("platforms", ["many-a", "many-b", "many-c", "none"], kinds,
                                using=PRIMARY, batch_size=2)
    assert found == {"many-a": "email", "many-b": "email", "many-c": "email"}
    assert labels.headers() == {labels.FALLBACK_HEADER: "replica", "Age": "0"}
    # A replica's answer is not cached: with the replica gone too, nothing is servable.
    with pytest.raises(ResilienceError):
        protected.load_many("platforms", ["many-a"], kinds, using=PRIMARY, replicas=[])


def test_load_many_past_a_lagging_replica_serves_stale_then_its_fallback(on_pair):
    add("cached")
    assert protected.load_many("platforms", ["cached"], kinds, using=PRIMARY,
                               ttl=0) == {"cached": "email"}
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    add("uncached")
    wait_until(lambda: replicas.lag(REPLICA) > 0.5, "the replica falls behind")
    on_pair.cut()
    found = protected.load_many("platforms", ["cached", "uncached"], kinds, using=PRIMARY,
                                ttl=0, fallback=lambda ids: dict.fromkeys(ids, "unknown"))
    assert found == {"cached": "email", "uncached": "unknown"}
    assert labels.headers() == {labels.FALLBACK_HEADER: "degraded"}
    assert get_breaker(replicas.circuit_of(REPLICA)).snapshot()["failures"] == 0


def test_no_write_and_no_migration_on_a_replica(on_pair):
    with replicas.reading(REPLICA):
        assert router.db_for_read(Platform) == REPLICA
        assert router.db_for_write(Platform) == DIRECT
    assert router.db_for_read(Platform) == PRIMARY
    assert router.allow_migrate(REPLICA, "crm") is False
    assert router.allow_migrate(PRIMARY, "crm") is not False
