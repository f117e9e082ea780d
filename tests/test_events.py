"""The audit trail: one ``CircuitEvent`` per transition, written off the request path and kept
even while the database is down.

Transitions only buffer their event; the background flusher (off in tests unless the
``background_flusher`` fixture turns it on) or ``events.flush()`` writes it. The outage tests
route the app's tables (``RESILIENCE_CRM["DATABASE_ALIAS"]``) to an alias whose server is not
there (``database_down``) or behind a TCP proxy the test stalls (``postgres_proxy``).
"""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from model_bakery import baker

from resilience_crm import flusher, get_breaker, metrics
from resilience_crm.breakers import events
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.control import steer
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.models import Circuit, CircuitEvent
from tests.clock import Clock
from tests.databases import APP_ALIAS
from tests.failing import boom, trip
from tests.waiting import wait_until

CIRCUIT = "test.events"

TRIPS_AFTER_TWO = {
    "failure_threshold": 2,
    "failure_rate_threshold": 0,
    "reset_timeout": 60,
    "max_reset_timeout": 60,
}


#: The query guard's circuit in the test that guards the app's tables, and its reset_timeout.
GUARD_CIRCUIT = "test.guard"
GUARD_RESET = 1.0
#: The guard circuit's reset_timeout in the settings when the admin saved GUARD_RESET over it.
GUARD_SETTINGS_RESET = {"reset_timeout": 60, "max_reset_timeout": 60}


@pytest.fixture(autouse=True)
def _trips_after_two(settings):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO}}


def transitions(name: str = CIRCUIT) -> list[tuple[int, str, str]]:
    """The circuit's events in the order they were written."""
    return list(
        CircuitEvent.objects.filter(circuit__name=name)
        .order_by("pk")
        .values_list("generation", "from_state", "to_state")
    )


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
    assert events.pending_count() == 1

    assert events.flush() == 1

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

    assert events.flush() == 2

    assert transitions() == [(1, "closed", "open"), (2, "open", "half_open")]
    assert events.pending_count() == 0  # a duplicate is done with, not kept for a retry
    circuit = Circuit.objects.get(name=CIRCUIT)
    # The late copy of generation 1 does not move the circuit back.
    assert (circuit.state, circuit.generation) == ("half_open", 2)


@pytest.mark.django_db
def test_a_different_transition_with_the_same_generation_is_kept(caplog):
    """Only circuit, generation, from_state and to_state together make a duplicate."""
    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures")
    events.record_transition(CIRCUIT, "half_open", "open", 1, "trial_failed")
    events.record_transition(CIRCUIT, "closed", "forced_open", 1, "forced")

    with caplog.at_level(logging.ERROR, logger="resilience_crm.breakers.events"):
        assert events.flush() == 3

    assert transitions() == [(1, "closed", "open"), (1, "half_open", "open"),
                             (1, "closed", "forced_open")]
    assert not caplog.records


# Manual changes and the local fallback -------------------------------------------------------


@pytest.mark.django_db
def test_a_reset_from_a_command_names_the_command_and_the_user():
    user = baker.make(get_user_model())
    breaker = get_breaker(CIRCUIT)
    trip(breaker)

    breaker.reset(actor=user, reason="backend fixed", source="command")
    events.flush()

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT, generation=2)
    assert (event.from_state, event.to_state) == ("open", "closed")
    assert event.source == "command"
    assert event.actor == user
    assert event.reason == "backend fixed"
    assert CircuitEvent.objects.get(circuit__name=CIRCUIT, generation=1).actor is None


@pytest.mark.django_db
def test_a_manual_change_has_its_event_written_when_it_returns():
    """``control.steer`` (the admin and the commands) flushes: the audit row is there."""
    user = baker.make(get_user_model())

    steer(CIRCUIT, core.FORCED_OPEN, actor=user, source="admin")

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.from_state, event.to_state) == ("closed", "forced_open")
    assert event.source == "admin"
    assert event.actor == user
    assert Circuit.objects.get(name=CIRCUIT).state == "forced_open"
    assert events.pending_count() == 0


@pytest.mark.django_db
def test_transitions_made_while_the_shared_store_is_down_are_recorded_as_local(settings):
    settings.CACHES = {
        **settings.CACHES,
        "redis_down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
        },
    }
    settings.RESILIENCE_CRM = {
        "STORE": "redis", "CACHE_ALIAS": "redis_down", "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO},
    }
    breaker = get_breaker(CIRCUIT)
    trip(breaker)
    assert breaker.using_fallback
    events.flush()

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.from_state, event.to_state, event.generation) == ("closed", "open", 1)
    assert event.source == "local"
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == ("closed", 0)  # the cluster's, unmoved


@pytest.mark.django_db
def test_local_events_neither_move_the_circuit_row_nor_take_the_shared_generations():
    """A worker's local breaker numbered generations 1 and 2 while the store was down; the
    shared store then makes its own generation 1 and 2. Every one of them is kept."""
    user = baker.make(get_user_model())
    Circuit.objects.create(name=CIRCUIT, forced_state=core.FORCED_OPEN, forced_by=user,
                           forced_reason="maintenance", state=core.FORCED_OPEN)
    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures",
                             source="local")
    events.record_transition(CIRCUIT, "open", "closed", 2, "reset", source="local")
    # Another worker's local breaker, the same numbers: a different event, also kept.
    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures",
                             source="local")
    assert events.flush() == 3

    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == (core.FORCED_OPEN, 0)
    assert (circuit.forced_state, circuit.forced_by, circuit.forced_reason) == (
        core.FORCED_OPEN, user, "maintenance")

    events.record_transition(CIRCUIT, "closed", "open", 1, "consecutive_failures")
    events.record_transition(CIRCUIT, "open", "closed", 2, "reset")
    assert events.flush() == 2

    assert sorted(CircuitEvent.objects.filter(circuit__name=CIRCUIT)
                  .values_list("source", "generation", "to_state")) == [
        ("breaker", 1, "open"), ("breaker", 2, "closed"),
        ("local", 1, "open"), ("local", 1, "open"), ("local", 2, "closed")]
    circuit.refresh_from_db()
    assert (circuit.state, circuit.generation, circuit.forced_state) == ("closed", 2, "")


@pytest.mark.django_db
def test_a_manual_change_on_a_local_breaker_is_recorded_as_local(settings):
    """The actor and reason are kept; the generation is the worker's, so the event is local."""
    from resilience_crm.signals import circuit_transition

    user = baker.make(get_user_model())
    circuit_transition.send(sender=Breaker, name=CIRCUIT, from_state="closed",
                            to_state="forced_open", generation=4, reason="failover",
                            actor=user, at=None, local=True, source="command")
    events.flush()

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.source, event.actor, event.reason) == ("local", user, "failover")
    assert Circuit.objects.get(name=CIRCUIT).generation == 0


# The database down -----------------------------------------------------------------------------


def test_events_made_while_the_database_is_down_are_buffered_then_written_in_order(
    database_down, caplog
):
    breaker = get_breaker(CIRCUIT)
    trip(breaker)  # closed -> open
    breaker.reset(reason="backend fixed")  # open -> closed
    trip(breaker)  # closed -> open
    assert events.pending_count() == 3

    with caplog.at_level(logging.WARNING, logger="resilience_crm.breakers.events"):
        assert events.flush() == 0
    assert events.pending_count() == 3
    assert "Could not write 3 buffered circuit events" in caplog.text

    database_down.end()
    assert events.flush() == 3

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open"), (2, "open", "closed"), (3, "closed", "open")]
    assert list(CircuitEvent.objects.filter(circuit__name=CIRCUIT)
                .order_by("pk").values_list("reason", flat=True)) == [
        "consecutive_failures", "backend fixed", "consecutive_failures"]
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == ("open", 3)
    assert events.flush() == 0


def test_buffered_events_keep_the_time_of_their_transition(database_down):
    clock = Clock()
    breaker = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS_AFTER_TWO), MemoryStore(clock),
                      clock=clock, monotonic=clock, rand=lambda: 0.5)
    trip(breaker)
    clock.now += 3600

    database_down.end()
    events.flush()

    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert event.created_at.timestamp() == pytest.approx(1_700_000_000.0)


def test_a_full_buffer_drops_the_oldest_event_with_an_error(database_down, monkeypatch, caplog):
    monkeypatch.setattr(events, "BUFFER_SIZE", 3)
    changes = [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
               ("open", "half_open"), ("half_open", "closed")]
    with caplog.at_level(logging.WARNING, logger="resilience_crm.breakers.events"):
        for generation, (from_state, to_state) in enumerate(changes, start=1):
            events.record_transition(CIRCUIT, from_state, to_state, generation)
        events.flush()  # fails: the events go back in front, the buffer still full
        events.record_transition(CIRCUIT, "closed", "open", 6)
    assert events.pending_count() == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all(message.startswith("Event buffer full") for message in errors)
    assert "'generation': 1" in errors[0]
    assert "'generation': 2" in errors[1]
    assert "'generation': 3" in errors[2]
    assert metrics.value("events_dropped") == 3

    database_down.end()
    assert events.flush() == 3

    assert transitions() == [(4, "open", "half_open"), (5, "half_open", "closed"),
                             (6, "closed", "open")]
    assert Circuit.objects.get(name=CIRCUIT).state == "open"


@pytest.mark.postgres
def test_an_event_the_database_refuses_does_not_hold_up_the_rest(postgres, database_down,
                                                                  caplog):
    """PostgreSQL enforces the name's length (SQLite does not), so it refuses the event."""
    events.record_transition(CIRCUIT, "closed", "open", 1)
    events.record_transition("x" * 300, "closed", "open", 1)  # longer than Circuit.name allows
    events.record_transition(CIRCUIT, "open", "half_open", 2)
    database_down.end()

    with caplog.at_level(logging.ERROR, logger="resilience_crm.breakers.events"):
        assert events.flush() == 2

    assert events.pending_count() == 0
    assert transitions() == [(1, "closed", "open"), (2, "open", "half_open")]
    assert any("the database refuses it" in r.getMessage() for r in caplog.records)


def test_a_manual_change_holds_while_the_database_is_down(database_down, caplog):
    """The live state changes and its event waits; only the row's forced fields are missed."""
    assert steer(CIRCUIT, core.FORCED_OPEN, reason="failover", source="command").circuit is None

    assert get_breaker(CIRCUIT).state == core.FORCED_OPEN
    assert "its row could not be updated" in caplog.text
    assert events.pending_count() == 1
    database_down.end()
    events.flush()
    event = CircuitEvent.objects.get(circuit__name=CIRCUIT)
    assert (event.to_state, event.source, event.reason) == (core.FORCED_OPEN, "command",
                                                            "failover")


# Off the request path ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_transitions_and_requests_never_connect_to_the_database(postgres_proxy, client):
    """Only a flush opens a connection for events: not the transition, the store steps, nor
    the request that finishes afterwards."""
    breaker = get_breaker(CIRCUIT)  # reads the circuit's saved overrides, once
    sent = postgres_proxy.bytes_up
    for _ in range(3):
        trip(breaker)
        breaker.reset(reason="again")
        breaker.snapshot()
        assert client.get("/resilience/health/live").status_code == 200
    assert events.pending_count() == 6
    assert postgres_proxy.bytes_up == sent  # not one byte to the database

    assert events.flush() == 6
    assert postgres_proxy.bytes_up > sent
    assert len(transitions()) == 6


def test_the_background_flusher_writes_events_without_being_asked(background_flusher):
    breaker = get_breaker(CIRCUIT)
    trip(breaker)
    breaker.reset(reason="backend fixed")

    wait_until(lambda: transitions() == [(1, "closed", "open"), (2, "open", "closed")],
               "the flusher wrote both events")
    assert events.pending_count() == 0


def test_the_flusher_writes_events_buffered_in_an_outage_once_it_ends(
    database_down, background_flusher, monkeypatch
):
    monkeypatch.setattr(flusher, "BACKOFF_START", 0.05)
    monkeypatch.setattr(flusher, "BACKOFF_MAX", 0.2)
    breaker = get_breaker(CIRCUIT)
    trip(breaker)
    breaker.reset(reason="backend fixed")
    wait_until(flusher.database_down, "the flusher found the database down")
    assert events.pending_count() == 2

    database_down.end()

    wait_until(lambda: events.pending_count() == 0, "the flusher wrote the buffered events")
    assert transitions() == [(1, "closed", "open"), (2, "open", "closed")]
    wait_until(lambda: not flusher.database_down(), "the flusher saw the database back")


@pytest.mark.postgres
def test_the_flusher_backs_off_while_the_database_is_down(postgres_proxy, background_flusher,
                                                          monkeypatch):
    """Woken by every transition, it still tries a dead database once per backoff."""
    monkeypatch.setattr(flusher, "BACKOFF_START", 60.0)
    breaker = get_breaker(CIRCUIT)
    postgres_proxy.stalled = True
    trip(breaker)
    wait_until(flusher.database_down, "the first attempt timed out")
    attempts = postgres_proxy.connections
    assert attempts >= 1

    for _ in range(20):
        breaker.reset(reason="again")
        trip(breaker)
    rounds = flusher.rounds()
    flusher.wake()

    assert events.pending_count() == 41
    assert postgres_proxy.connections == attempts  # no new attempt inside the backoff
    assert flusher.rounds() == rounds


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("saved", [False, True], ids=["settings", "saved-in-the-admin"])
def test_the_flusher_tries_again_within_the_reset_timeout_of_the_guard_on_its_tables(
        postgres_proxy, background_flusher, settings, monkeypatch, saved):
    """With the query guard on the app's tables, the flusher's rounds may be the only trials
    its circuit gets (calls through protected do not count on it): after a stall it tries
    again within the circuit's reset_timeout, not after its own backoff, so the events get
    written and the circuit closes seconds after the database is back. The reset_timeout in
    effect: the settings', or the one saved on the circuit in the admin over them."""
    monkeypatch.setattr(flusher, "BACKOFF_START", 60.0)  # its own backoff: 15 to 30 s
    reset = {"reset_timeout": GUARD_RESET, "max_reset_timeout": GUARD_RESET}
    if saved:  # before the guard is on, so its breaker is made after, reading it
        Circuit.objects.update_or_create(name=GUARD_CIRCUIT, defaults={"config": reset})
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM,
                               "PROTECT_QUERIES": {APP_ALIAS: GUARD_CIRCUIT},
                               "CIRCUITS": {CIRCUIT: TRIPS_AFTER_TWO, GUARD_CIRCUIT: {
                                   "failure_threshold": 1,
                                   **(GUARD_SETTINGS_RESET if saved else reset)}}}
    if saved:  # as on a worker's first request, while the database answers
        assert get_breaker(GUARD_CIRCUIT).config.reset_timeout == GUARD_RESET
    breaker = get_breaker(CIRCUIT)
    postgres_proxy.stalled = True  # every connect times out
    trip(breaker)
    wait_until(flusher.database_down, "the first round timed out")
    assert get_breaker(GUARD_CIRCUIT).state == core.OPEN

    postgres_proxy.drop()  # the stall ends: this thread's connection goes with it
    postgres_proxy.restore()
    connections[APP_ALIAS].close()

    wait_until(lambda: events.pending_count() == 0, "the flusher wrote the events",
               timeout=GUARD_RESET + 8)
    assert transitions() == [(1, "closed", "open")]
    assert get_breaker(GUARD_CIRCUIT).state == core.CLOSED


# The caller's transaction -----------------------------------------------------------------------


def test_an_event_outlives_the_callers_transaction_rolling_back(background_flusher):
    breaker = get_breaker(CIRCUIT)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    with contextlib.suppress(ConnectionError), transaction.atomic():  # ATOMIC_REQUESTS, say
        breaker.call(boom)  # trips the circuit, then rolls the view's transaction back
    assert breaker.state == core.OPEN

    wait_until(lambda: transitions() == [(1, "closed", "open")], "the flusher wrote the event")


def test_a_flush_inside_the_callers_transaction_waits_for_its_commit(transactional_db):
    breaker = get_breaker(CIRCUIT)
    with transaction.atomic():
        trip(breaker)
        assert events.flush() == 0
        assert transitions() == []  # not inside the caller's transaction
    assert transitions() == [(1, "closed", "open")]
    assert events.pending_count() == 0


def test_events_kept_back_by_a_rolled_back_request_are_written_after_it(background_flusher,
                                                                         client):
    """With ATOMIC_REQUESTS the view's transaction rolls back; the event still lands."""
    breaker = get_breaker(CIRCUIT)
    with contextlib.suppress(ConnectionError), transaction.atomic():
        trip(breaker)
        assert events.flush() == 0  # on commit, which never comes
        raise ConnectionError("the view gives up; its transaction rolls back")

    client.get("/resilience/health/live")

    wait_until(lambda: transitions() == [(1, "closed", "open")], "the flusher wrote the event")


@pytest.mark.postgres
def test_a_flush_waits_for_the_events_the_flusher_is_writing(postgres_proxy,
                                                              background_flusher):
    """An admin action flushes while the flusher holds its event in a write that hangs: the
    action returns only once its event is written (here by the retry after the hang)."""
    connections.settings[APP_ALIAS]["OPTIONS"]["connect_timeout"] = 60
    breaker = get_breaker(CIRCUIT)
    postgres_proxy.stalled = True
    before = postgres_proxy.connections
    trip(breaker)
    wait_until(lambda: postgres_proxy.connections > before, "the flusher is stuck writing")
    assert events.pending_count() == 1

    flushed = []
    flushing = threading.Thread(target=lambda: flushed.append(events.flush(timeout=60)))
    flushing.start()
    postgres_proxy.stalled = False
    postgres_proxy.drop()  # the flusher's hanging attempt fails; the event goes back
    flushing.join(timeout=60)
    connections[APP_ALIAS].close()  # this thread's was cut too

    assert flushed == [1]
    assert transitions() == [(1, "closed", "open")]
