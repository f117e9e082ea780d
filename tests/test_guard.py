"""The query guard on the real PostgreSQL: every statement and connect on a guarded alias
through its circuit; an open circuit refuses with no connection and no byte sent; the
database's failures count, the caller's errors do not, slow statements count as slow;
``protected`` makes it stand aside; ``QUERY_TIMEOUT``; and the answer a plain view or the
admin gives while it refuses.

The guarded alias is the test database behind a fault proxy (``GUARDED``), so a test sees
every connection and byte the guard let through; the breakers live in memory."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    connections,
)
from django.urls import reverse
from django.utils import timezone

from resilience_crm import aside, get_breaker, protected, testutils
from resilience_crm.breakers import control, machine, registry
from resilience_crm.exceptions import CircuitOpenError, DatabaseCircuitOpen, OperationTimeout
from resilience_crm.provider import replay
from resilience_crm.provider.classify import classify
from tests.databases import extra_database
from tests.proxy import Proxy

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

GUARDED = "guarded"
CIRCUIT = "crm.db"
BREAKER = {"failure_threshold": 2, "reset_timeout": 60, "max_reset_timeout": 60,
           "slow_call_duration": 0.2, "failure_rate_threshold": 1.0}


@pytest.fixture
def proxy(postgres, settings):
    """The alias ``GUARDED``: the test database behind a fault proxy, guarded by
    ``crm.db``; yields the proxy."""
    default = connections["default"].settings_dict
    settings.RESILIENCE_CRM = {"STORE": "memory", "PROTECT_QUERIES": {GUARDED: CIRCUIT},
                               "CIRCUITS": {CIRCUIT: BREAKER}}
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        options = {**default.get("OPTIONS", {}), "connect_timeout": 2}
        with extra_database(GUARDED, {**default, "HOST": "127.0.0.1", "PORT": str(proxy.port),
                                      "OPTIONS": options}):
            yield proxy
    testutils.reset()


def select_one() -> int:
    with connections[GUARDED].cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]


def counts() -> dict:
    snapshot = get_breaker(CIRCUIT).snapshot()
    return {key: snapshot[key] for key in ("state", "calls", "failures", "slow")}


def test_the_guard_backend_is_the_test_databases_engine():
    assert connections["default"].settings_dict["ENGINE"] == (
        "resilience_crm.guard.backends.postgresql")
    assert connections["default"].vendor == "postgresql"


def test_an_open_circuit_refuses_before_any_connection(proxy):
    get_breaker(CIRCUIT).force(machine.FORCED_OPEN)

    with pytest.raises(DatabaseCircuitOpen) as refused:
        select_one()
    with pytest.raises(DatabaseCircuitOpen):
        User.objects.using(GUARDED).count()

    # No connection attempted, no socket opened.
    assert proxy.connections == 0
    assert connections[GUARDED].connection is None
    # One refusal, three ways to catch it: the circuit's, and the database's for code that
    # survives an unreachable database.
    assert isinstance(refused.value, CircuitOpenError)
    assert isinstance(refused.value, OperationalError)
    assert refused.value.circuit == CIRCUIT
    assert refused.value.code == "CIRCUIT_OPEN"


def test_an_open_circuit_refuses_statements_on_a_connection_already_made(proxy):
    assert select_one() == 1
    sent = proxy.bytes_up
    get_breaker(CIRCUIT).force(machine.FORCED_OPEN)

    with pytest.raises(DatabaseCircuitOpen):
        select_one()

    assert proxy.bytes_up == sent  # not a byte of the statement went out
    get_breaker(CIRCUIT).reset()
    assert select_one() == 1


def test_the_databases_failures_are_counted_until_the_circuit_opens(proxy):
    assert select_one() == 1
    connections[GUARDED].close()
    proxy.cut()  # every connection refused, as a crashed server's would be

    for _ in range(BREAKER["failure_threshold"]):
        with pytest.raises(OperationalError) as failed:
            select_one()
        assert not isinstance(failed.value, CircuitOpenError)
    attempts = proxy.connections

    assert counts()["state"] == machine.OPEN
    with pytest.raises(DatabaseCircuitOpen):
        select_one()
    assert proxy.connections == attempts  # the refusal made no connection attempt


@pytest.mark.redis
def test_a_worker_new_to_the_circuit_refuses_without_asking_the_database(proxy, settings,
                                                                        redis_cache):
    """A worker that never made ``crm.db``'s breaker (a new gunicorn worker, one that had no
    request yet) learns that the circuit is open from the shared store, without reading the
    circuit's saved settings from the very database the circuit guards: with that database
    blackholed, the read would wait out the connect timeout before the refusal."""
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "STORE": "redis",
                               "CACHE_ALIAS": "redis", "DATABASE_ALIAS": GUARDED}
    get_breaker(CIRCUIT).force(machine.FORCED_OPEN)
    testutils.reset()  # this process now knows nothing of the circuit
    connections[GUARDED].close()  # as in a new worker (a statement would hang on an open one)
    proxy.stalled = True  # blackholed: connections accepted, nothing answered
    attempts = proxy.connections

    with pytest.raises(DatabaseCircuitOpen):
        select_one()

    assert proxy.connections == attempts  # nothing asked of the guarded database
    proxy.restore()
    get_breaker(CIRCUIT).reset()


@pytest.mark.django_db(transaction=True)  # the store's rows are written on the guarded alias
def test_the_database_store_and_manual_changes_pass_a_guard_on_their_own_tables(proxy,
                                                                                 settings):
    """With the app's tables, the database breaker store's among them, on the guarded alias:
    the database's circuit forced open refuses the application's statements, but not every
    other circuit's state, nor the operator's reset of that circuit itself."""
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "STORE": "database",
                               "DATABASE_ALIAS": GUARDED}
    assert control.steer(CIRCUIT, machine.FORCED_OPEN, source="command").applied

    with pytest.raises(DatabaseCircuitOpen):
        select_one()
    assert get_breaker("crm.read").snapshot()["store"] == "shared"
    assert control.steer(CIRCUIT, machine.CLOSED, source="command").applied
    assert select_one() == 1


@pytest.mark.django_db(transaction=True)
def test_a_circuit_the_redis_store_lost_is_seeded_from_its_row_past_the_guard(
        proxy, settings, redis_cache):
    """The same with the Redis store: a circuit Redis has lost is seeded from its row on the
    guarded alias while the database's circuit is forced open, and Redis stays this
    process's store for every circuit."""
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "STORE": "redis",
                               "CACHE_ALIAS": "redis", "DATABASE_ALIAS": GUARDED}
    assert control.steer(CIRCUIT, machine.FORCED_OPEN, source="command").applied
    with pytest.raises(DatabaseCircuitOpen):
        select_one()
    store = registry.shared_store()
    store._client.delete(store.key("crm.read"))  # lost: evicted, say
    assert get_breaker("crm.read").snapshot()["store"] == "shared"
    assert registry.get_store().available
    assert control.steer(CIRCUIT, machine.CLOSED, source="command").applied


def test_the_callers_own_errors_are_not_counted(proxy):
    with connections[GUARDED].cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE guarded (id integer PRIMARY KEY)")
        cursor.execute("INSERT INTO guarded VALUES (1)")
        for sql, error in (("INSERT INTO guarded VALUES (1)", IntegrityError),
                           ("SELECT * FROM no_such_table", ProgrammingError),
                           ("SELECT 1 / 0", DataError)):
            with pytest.raises(error):
                cursor.execute(sql)

    seen = counts()
    assert seen["failures"] == 0
    assert seen["calls"] >= 5  # the connect and every statement went through the breaker
    assert seen["state"] == machine.CLOSED


def test_slow_statements_are_counted_as_slow(proxy):
    with connections[GUARDED].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [BREAKER["slow_call_duration"] * 2])

    assert counts()["slow"] == 1


def test_inside_protected_the_guard_stands_aside(proxy):
    get_breaker(CIRCUIT).force(machine.FORCED_OPEN)

    def count_users() -> int:
        assert aside.standing_aside()
        return User.objects.using(GUARDED).count()

    # protected runs the call under its own circuit; the forced-open crm.db does not refuse
    # it, and does not count it.
    assert protected.rpc("count-users", count_users) == User.objects.count()
    assert proxy.connections >= 1
    assert not aside.standing_aside()
    with pytest.raises(DatabaseCircuitOpen):
        select_one()  # outside protected, the guard again


def test_a_failure_inside_protected_counts_on_its_circuit_only(proxy, settings):
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "QUERY_TIMEOUT": {GUARDED: 0.1}}

    def sleep() -> None:
        with connections[GUARDED].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")

    with pytest.raises(OperationTimeout):  # cancelled by QUERY_TIMEOUT
        protected.rpc("sleep", sleep, retry=False)

    assert get_breaker("crm.rpc").snapshot()["failures"] == 1
    assert counts()["failures"] == 0


def test_query_timeout_limits_every_statement_of_unprotected_code(proxy, settings):
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "QUERY_TIMEOUT": {GUARDED: 0.25}}

    with connections[GUARDED].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "250ms"
        with pytest.raises(OperationalError):
            cursor.execute("SELECT pg_sleep(5)")

    assert counts()["failures"] == 1  # a statement the server cancelled: the database's


def test_the_databases_failure_raised_again_as_another_error_still_counts(proxy, settings):
    """A wrapper of the caller's own, inside the guard's, may raise the database's failure
    again as another error chained from it: the guard counts it, as ``protected`` does."""
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "QUERY_TIMEOUT": {GUARDED: 0.1}}

    def report(execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        except OperationalError as err:
            raise DatabaseError("the report could not be built") from err

    with connections[GUARDED].execute_wrapper(report), pytest.raises(DatabaseError) as failed, \
            connections[GUARDED].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(1)")  # cancelled by QUERY_TIMEOUT

    assert not isinstance(failed.value, OperationalError)
    assert classify(failed.value).dependency
    assert counts()["failures"] == 1


def test_no_query_timeout_by_default(proxy):
    with connections[GUARDED].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


def test_an_alias_the_setting_does_not_name_is_not_guarded(proxy, settings):
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "PROTECT_QUERIES": {}}
    get_breaker(CIRCUIT).force(machine.FORCED_OPEN)

    assert select_one() == 1


@pytest.fixture
def refusing(settings):
    """The guard's URLconf, and the test database's ``default`` alias guarded by a
    ``crm.db`` forced open (reset before the test's transaction is rolled back)."""
    settings.ROOT_URLCONF = "tests.guard_urls"
    settings.RESILIENCE_CRM = {"STORE": "memory", "PROTECT_QUERIES": {"default": CIRCUIT}}
    until = timezone.now() + timedelta(seconds=30)
    yield lambda: get_breaker(CIRCUIT).force(machine.FORCED_OPEN, until=until)
    get_breaker(CIRCUIT).reset()


def test_a_plain_view_answers_503_problem_json(client, refusing):
    refusing()

    response = client.get(reverse("guard-plain"))

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "CIRCUIT_OPEN"
    assert response.json()["circuit"] == CIRCUIT
    assert 25 <= int(response["Retry-After"]) <= 30


def test_the_admin_answers_a_short_503_page(admin_client, refusing):
    refusing()

    response = admin_client.get(reverse("admin:auth_user_changelist"))

    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert 25 <= int(response["Retry-After"]) <= 30
    page = response.content.decode()
    assert "Temporarily unavailable" in page
    assert f"<code>{CIRCUIT}</code>" in page
    assert "tried again in about" in page
    assert f"<code>manage.py resilience_reset {CIRCUIT}</code>" in page


@pytest.mark.django_db(transaction=True)
def test_a_replay_stops_when_the_database_fails_under_it(proxy, settings):
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "DATABASE_ALIAS": GUARDED}
    proxy.cut()  # the queued writes' table refuses connections

    report = replay.replay()

    assert report.stopped == "the database failed; the rest waits for the next replay"


def test_a_replay_stops_with_the_circuit_that_refused_it(refusing):
    refusing()

    report = replay.replay()

    assert report.stopped.startswith(f"circuit {CIRCUIT} is open, tried again in ")
