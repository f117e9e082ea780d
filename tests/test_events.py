"""The audit trail: one ``CircuitEvent`` per transition, kept even while the database is down.

The outage tests route the app's tables (``RESILIENCE_CRM["DATABASE_ALIAS"]``) to an alias
whose server is not there, so every write is a real connection attempt that fails; then the
alias is pointed back at the test database and the buffered events are written.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque

import pytest
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.db.utils import load_backend
from model_bakery import baker

from resilience_crm import core, events, get_breaker
from resilience_crm.breaker import Breaker
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import Circuit, CircuitEvent
from resilience_crm.stores.memory import MemoryStore
from tests.clock import Clock

CIRCUIT = "test.events"
ALIAS = "resilience_events"
CLOSED_PORT = 1  # nothing listens there; a connection is refused at once

TRIPS_AFTER_TWO = {
    "failure_threshold": 2,
    "failure_rate_threshold": 0,
    "reset_timeout": 60,
    "max_reset_timeout": 60,
}


def boom():
    raise ConnectionError("the backend is down")


def trip(breaker) -> None:
    """Fail calls until the circuit opens; the caller sees only the backend's own errors."""
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(boom)


def transitions(name: str = CIRCUIT) -> list[tuple[int, str, str]]:
    """The circuit's events in the order they were written."""
    return list(
        CircuitEvent.objects.filter(circuit__name=name)
        .order_by("pk")
        .values_list("generation", "from_state", "to_state")
    )


@pytest.fixture(autouse=True)
def _no_buffered_events():
    """The buffer is per process: nothing left in it may leak into another test."""
    events._pending.clear()
    yield
    events._pending.clear()


class Outage:
    """The database the app's tables live on, unreachable until :meth:`end`."""

    def __init__(self, connection, working: dict) -> None:
        self.connection = connection
        self.working = working

    def end(self) -> None:
        """The server answers again at the configured address: the next query reconnects."""
        self.connection.close()
        self.connection.settings_dict.update(self.working)


@pytest.fixture
def database_down(transactional_db, settings, tmp_path):
    """Route the app's tables through ``ResilienceRouter`` to ``ALIAS``, a database nobody
    answers at.

    Once the outage ends ``ALIAS`` is a second connection to the test database, so what it
    writes is committed: hence ``transactional_db``, requested before ``settings`` so that the
    router is gone again when the tables are flushed after the test.
    """
    working = dict(connections["default"].settings_dict)
    if working["ENGINE"] == "django.db.backends.sqlite3":
        down = {**working, "NAME": str(tmp_path / "no-such-directory" / "db.sqlite3")}
    else:
        down = {**working, "HOST": "127.0.0.1", "PORT": CLOSED_PORT}
    # Django reads DATABASES once, at start-up, and its test case refuses connections to
    # aliases it was not told about then; a connection added to the handler afterwards is
    # the one kind it allows.
    connection = load_backend(down["ENGINE"]).DatabaseWrapper(down, ALIAS)
    connections[ALIAS] = connection
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {
        "STORE": "memory", "DATABASE_ALIAS": ALIAS, "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO},
    }
    yield Outage(connection, working)
    connection.close()
    if connection.connection is not None:  # SQLite leaves an in-memory database open
        connection.connection.close()
    del connections[ALIAS]


# One event per transition ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "store", ["memory", "database", pytest.param("redis", marks=pytest.mark.redis)]
)
def test_a_transition_writes_one_event_and_moves_the_circuit_row(settings, request, store):
    if store == "redis":
        request.getfixturevalue("redis_settings")  # the real Redis, emptied of this suite's keys
    cache = {"CACHE_ALIAS": "redis"} if store == "redis" else {}
    settings.RESILIENCE_CRM = {"STORE": store, **cache, "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}
    trip(get_breaker(CIRCUIT))

    rows = list(CircuitEvent.objects.filter(circuit__name=CIRCUIT))
    assert len(rows) == 1
    event = rows[0]
    assert (event.from_state, event.to_state, event.generation) == ("closed", "open", 1)
    assert event.reason == "consecutive_failures"
    assert event.source == "breaker"
    assert event.actor is None
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == ("open", 1)


@pytest.mark.django_db
def test_writing_the_same_event_again_keeps_one_row():
    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures")
    events.record_transition(CIRCUIT, "open", "half_open", 2, "reset_timeout")
    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures")  # again

    assert transitions() == [(1, "closed", "open"), (2, "open", "half_open")]
    assert events.pending_count() == 0  # a duplicate is done with, not kept for a retry
    circuit = Circuit.objects.get(name=CIRCUIT)
    # The late copy of generation 1 does not move the circuit back.
    assert (circuit.state, circuit.generation) == ("half_open", 2)


# Manual changes and the local fallback -------------------------------------------------------


@pytest.mark.django_db
def test_a_reset_from_a_command_names_the_command_and_the_user(settings):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}
    user = baker.make(get_user_model())
    breaker = get_breaker(CIRCUIT)
    trip(breaker)

    breaker.reset(actor=user, reason="backend fixed", source="command")

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT, generation=2)
    assert (event.from_state, event.to_state) == ("open", "closed")
    assert event.source == "command"
    assert event.actor == user
    assert event.reason == "backend fixed"
    assert CircuitEvent.objects.get(circuit__name=CIRCUIT, generation=1).actor is None


@pytest.mark.django_db
def test_forcing_with_an_actor_and_no_source_is_recorded_as_the_admin(settings):
    settings.RESILIENCE_CRM = {"STORE": "memory"}
    user = baker.make(get_user_model())

    get_breaker(CIRCUIT).force(core.FORCED_OPEN, actor=user)

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.from_state, event.to_state) == ("closed", "forced_open")
    assert event.source == "admin"
    assert event.actor == user
    assert Circuit.objects.get(name=CIRCUIT).state == "forced_open"


@pytest.mark.django_db
def test_transitions_made_while_the_shared_store_is_down_are_recorded_as_local(settings):
    settings.CACHES = {
        **settings.CACHES,
        "redis_down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{CLOSED_PORT}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
        },
    }
    settings.RESILIENCE_CRM = {
        "STORE": "redis", "CACHE_ALIAS": "redis_down", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO},
    }
    breaker = get_breaker(CIRCUIT)
    trip(breaker)
    assert breaker.using_fallback

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.from_state, event.to_state, event.generation) == ("closed", "open", 1)
    assert event.source == "local"


# The database down -----------------------------------------------------------------------------


def test_events_made_while_the_database_is_down_are_buffered_then_written_in_order(
    database_down, caplog
):
    breaker = get_breaker(CIRCUIT)
    with caplog.at_level(logging.WARNING, logger="resilience_crm.events"):
        trip(breaker)  # closed -> open
        assert events.pending_count() == 1
        breaker.reset(reason="backend fixed")  # open -> closed
        trip(breaker)  # closed -> open
    assert events.pending_count() == 3
    warnings = [r for r in caplog.records
                if r.name == "resilience_crm.events" and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "could not write the closed -> open event" in warnings[0].getMessage()
    assert "buffered (3 waiting)" in warnings[2].getMessage()

    database_down.end()
    assert events.flush_pending() == 3

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open"), (2, "open", "closed"), (3, "closed", "open")]
    assert list(CircuitEvent.objects.filter(circuit__name=CIRCUIT)
                .order_by("pk").values_list("reason", flat=True)) == [
        "consecutive_failures", "backend fixed", "consecutive_failures"]
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == ("open", 3)
    assert events.flush_pending() == 0


def test_the_next_transition_writes_the_buffered_events_first(database_down):
    breaker = get_breaker(CIRCUIT)
    trip(breaker)
    assert events.pending_count() == 1
    database_down.end()

    breaker.reset()

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open"), (2, "open", "closed")]
    assert Circuit.objects.get(name=CIRCUIT).state == "closed"


def test_buffered_events_keep_the_time_of_their_transition(database_down):
    clock = Clock()
    breaker = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS_AFTER_TWO), MemoryStore(clock),
                      clock=clock, monotonic=clock, rand=lambda: 0.5)
    trip(breaker)
    clock.now += 3600

    database_down.end()
    events.flush_pending()

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert event.created_at.timestamp() == pytest.approx(1_700_000_000.0)


def test_a_full_buffer_drops_the_oldest_event_with_an_error(database_down, monkeypatch, caplog):
    monkeypatch.setattr(events, "_pending", deque(maxlen=3))
    changes = [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
               ("open", "half_open"), ("half_open", "closed")]
    with caplog.at_level(logging.WARNING, logger="resilience_crm.events"):
        for generation, (from_state, to_state) in enumerate(changes, start=1):
            events.record_transition(CIRCUIT, from_state, to_state, generation)
    assert events.pending_count() == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(message.startswith("Event buffer full; dropped") for message in errors)
    assert "'generation': 1" in errors[0]
    assert "'generation': 2" in errors[1]

    database_down.end()
    assert events.flush_pending() == 3

    assert transitions() == [(3, "half_open", "open"), (4, "open", "half_open"),
                             (5, "half_open", "closed")]
    assert Circuit.objects.get(name=CIRCUIT).state == "closed"


def test_an_event_outlives_the_callers_transaction_rolling_back(transactional_db, settings):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}
    breaker = get_breaker(CIRCUIT)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    with contextlib.suppress(ConnectionError), transaction.atomic():  # ATOMIC_REQUESTS, say
        breaker.call(boom)  # trips the circuit, then rolls the view's transaction back
    assert breaker.state == core.OPEN

    events.flush_pending()  # whatever was kept back for later is written now
    assert transitions() == [(1, "closed", "open")]


def test_an_event_made_in_a_committed_transaction_is_written_on_commit(transactional_db,
                                                                       settings):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}
    breaker = get_breaker(CIRCUIT)
    with transaction.atomic():
        trip(breaker)
        assert transitions() == []  # not inside the caller's transaction
    assert transitions() == [(1, "closed", "open")]
    assert events.pending_count() == 0


@pytest.mark.postgres
def test_an_event_the_database_refuses_does_not_hold_up_the_rest(postgres, database_down,
                                                                  caplog):
    """PostgreSQL enforces the name's length (SQLite does not), so it refuses the event."""
    events.record_transition(CIRCUIT, "closed", "open", 1)
    events.record_transition("x" * 300, "closed", "open", 1)  # longer than Circuit.name allows
    events.record_transition(CIRCUIT, "open", "half_open", 2)
    database_down.end()

    with caplog.at_level(logging.ERROR, logger="resilience_crm.events"):
        assert events.flush_pending() == 2

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open"), (2, "open", "half_open")]
    assert any("the database refuses it" in r.getMessage() for r in caplog.records)


def test_events_kept_back_by_a_rolled_back_request_are_written_after_it(transactional_db,
                                                                         settings, client):
    """With ATOMIC_REQUESTS the view's transaction rolls back; the event still lands."""
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}
    breaker = get_breaker(CIRCUIT)
    with contextlib.suppress(ConnectionError), transaction.atomic():
        trip(breaker)
        raise ConnectionError("the view gives up; its transaction rolls back")
    assert events.pending_count() == 1

    client.get("/resilience/health/live")

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open")]


def test_a_manual_change_holds_while_the_database_is_down(database_down, caplog):
    """The live state changes and its event waits; only the row's forced fields are missed."""
    from resilience_crm.control import steer

    assert steer(CIRCUIT, core.FORCED_OPEN, reason="failover", source="command").circuit is None

    assert get_breaker(CIRCUIT).state == core.FORCED_OPEN
    assert "its row could not be updated" in caplog.text
    assert events.pending_count() == 1
    database_down.end()
    events.flush_pending()
    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.to_state, event.source, event.reason) == (core.FORCED_OPEN, "command",
                                                            "failover")
