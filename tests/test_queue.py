"""The write queue: applied now or queued in Redis, replayed exactly once into PostgreSQL,
also when the replaying process is killed midway; dead letters and the admin's requeue; a
write the database would refuse is refused before it is queued, and one it refuses on replay
is a dead letter at once, never in the way of the writes behind it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from django.core.cache import caches
from django.db import connections
from django.urls import reverse
from django_redis import get_redis_connection
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from crm_demo.crm.models import Contact
from resilience_crm import get_breaker
from resilience_crm.exceptions import (
    IdempotencyConflict,
    IdempotencyInFlight,
    InvalidWrite,
    QueueUnavailable,
)
from resilience_crm.models import QueuedWrite
from resilience_crm.provider import handlers, probe, queue, replay, stream
from resilience_crm.provider.facade import protected
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ctx = multiprocessing.get_context("fork")
attempts: list[str] = []


@protected.write_handler("test.contact", key="contacts")
def create_contact(payload):
    attempts.append(payload["email"])
    return {"id": Contact.objects.create(**payload).pk}


@protected.write_handler("test.broken")
def broken(payload):
    raise ValueError("this handler always fails")


@protected.write_handler("test.modelled", key="contacts", model=Contact)
def create_checked_contact(payload):
    return {"id": Contact.objects.create(**payload).pk}


#: The alias of a database nobody answers at, for ``test.unreachable`` (set by its test).
unreachable: list[str] = []


@protected.write_handler("test.unreachable")
def write_elsewhere(payload):
    with connections[unreachable[0]].cursor() as cursor:
        cursor.execute("SELECT 1")


@pytest.fixture
def queued(settings, redis_cache, postgres, transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    attempts.clear()
    yield


def contact(n, **extra):
    return {"name": f"Contact {n}", "email": f"c{n}@example.com", **extra}


def outage():
    get_breaker("crm.write").force("forced_open", reason="database outage")


def recovery():
    get_breaker("crm.write").force("forced_closed", reason="database back")


def test_a_write_applies_now_with_its_key_in_the_same_transaction(queued):
    receipt = protected.submit("test.contact", contact(1), idempotency_key="k1")
    assert receipt.status == "applied" and not receipt.queued
    row = QueuedWrite.objects.get(idempotency_key="k1")
    assert row.state == "applied" and row.result == receipt.result
    assert Contact.objects.get(pk=receipt.result["id"]).email == "c1@example.com"


def test_the_same_key_again_returns_the_first_result_and_applies_nothing(queued):
    """The key's row is written last, with the effect: a repeat runs its handler, finds the
    key taken and rolls the handler's effect back with it."""
    first = protected.submit("test.contact", contact(1), idempotency_key="k1")
    again = protected.submit("test.contact", contact(1), idempotency_key="k1")
    assert again.result == first.result and again.status == "applied"
    assert Contact.objects.count() == 1 and Contact.objects.get().pk == first.result["id"]
    assert QueuedWrite.objects.get(idempotency_key="k1").attempts == 1


def test_the_same_key_with_another_payload_is_a_conflict(queued):
    protected.submit("test.contact", contact(1), idempotency_key="k1")
    with pytest.raises(IdempotencyConflict) as raised:
        protected.submit("test.contact", contact(2), idempotency_key="k1")
    assert raised.value.status == 422
    assert Contact.objects.count() == 1


def test_a_key_still_in_flight_is_refused(queued):
    QueuedWrite.objects.create(name="test.contact", idempotency_key="k1", state="applying",
                               payload=contact(1), payload_hash=queue.payload_hash(contact(1)))
    with pytest.raises(IdempotencyInFlight) as raised:
        protected.submit("test.contact", contact(1), idempotency_key="k1")
    assert raised.value.status == 409


def test_a_key_waiting_in_the_queue_gets_the_same_receipt(queued):
    QueuedWrite.objects.create(name="test.contact", idempotency_key="k1",
                               payload=contact(1), payload_hash=queue.payload_hash(contact(1)))
    assert protected.submit("test.contact", contact(1), idempotency_key="k1").queued
    assert not Contact.objects.exists()


def test_a_failed_effect_leaves_no_key_behind(queued):
    with pytest.raises(TypeError):
        protected.submit("test.contact", contact(1, no_such_field=1), idempotency_key="k1")
    assert not QueuedWrite.objects.exists()


def test_a_refused_write_leaves_the_cached_reads_of_its_space_fresh(queued):
    fetched = []

    def contacts():
        fetched.append(1)
        return ["a contact"]

    protected.read("contacts:all", contacts)
    with pytest.raises(TypeError):  # refused by the handler: nothing was written
        protected.submit("test.contact", contact(1, no_such_field=1), idempotency_key="k1")

    assert protected.read("contacts:all", contacts) == ["a contact"]
    assert len(fetched) == 1  # still the cached one


def test_writes_during_an_outage_are_queued_then_applied_exactly_once(queued):
    outage()
    receipts = []
    for n in range(20):
        receipts.append(protected.submit("test.contact", contact(n), idempotency_key=f"k{n}"))
        if n % 4 == 0:  # a client that did not hear back sends it again
            receipts.append(protected.submit("test.contact", contact(n),
                                             idempotency_key=f"k{n}"))
    assert all(receipt.queued for receipt in receipts)
    with pytest.raises(IdempotencyConflict):
        protected.submit("test.contact", contact(99), idempotency_key="k3")
    assert probe.stream_length() == 20 and not Contact.objects.exists()
    recovery()
    assert protected.submit("test.contact", contact(3), idempotency_key="k3").queued
    report = queue.replay()
    assert (report.moved, report.applied, report.failed) == (20, 20, 0)
    assert probe.stream_length() == 0
    assert sorted(Contact.objects.values_list("email", flat=True)) == sorted(
        f"c{n}@example.com" for n in range(20))
    assert queue.replay().applied == 0
    again = protected.submit("test.contact", contact(3), idempotency_key="k3")
    assert again.status == "applied" and Contact.objects.count() == 20


def test_writes_of_one_entity_replay_in_the_order_submitted(queued):
    outage()
    for n in range(5):
        protected.submit("test.contact", contact(n), idempotency_key=f"k{n}", entity="acme")
    recovery()
    replay.drain()
    # A replayer elsewhere holds the first one: the others of the entity must wait for it.
    first = replay.claim("elsewhere", lease=60)
    assert first.idempotency_key == "k0"
    assert replay.claim("here") is None
    assert replay.apply(first, "elsewhere") == "applied"
    queue.replay()
    assert attempts == [f"c{n}@example.com" for n in range(5)]


def replay_and_hang(started):
    """A replayer whose handler does its work and then hangs until it is killed."""

    def hang(payload):
        Contact.objects.create(**payload)
        started.set()
        time.sleep(60)  # killed long before

    handlers.register("test.contact", key="contacts")(hang)
    queue.replay(lease=1.0)


def test_a_replayer_killed_midway_loses_nothing_and_applies_nothing_twice(queued):
    outage()
    for n in range(20):
        protected.submit("test.contact", contact(n), idempotency_key=f"k{n}")
    recovery()
    queue.replay(limit=5)  # some applied before the crash
    connections.close_all()
    started = ctx.Event()
    replayer = ctx.Process(target=replay_and_hang, args=(started,))
    replayer.start()
    try:
        assert started.wait(20), "the replayer never reached the handler"
        os.kill(replayer.pid, signal.SIGKILL)
    finally:
        replayer.join(20)
    stuck = QueuedWrite.objects.get(state="applying")
    assert stuck.lease_owner

    def taken_over():
        queue.replay()
        return QueuedWrite.objects.get(pk=stuck.pk).state == "applied"

    wait_until(taken_over, "taking over the dead replayer's row")  # after its 1 s lease
    assert QueuedWrite.objects.filter(state="applied").count() == 20
    emails = list(Contact.objects.values_list("email", flat=True))
    assert sorted(emails) == sorted(f"c{n}@example.com" for n in range(20))


def test_writes_that_keep_failing_become_dead_letters_the_admin_can_requeue(queued,
                                                                            admin_client):
    outage()
    protected.submit("test.broken", {"n": 1}, idempotency_key="doomed")
    recovery()
    replay.drain()
    for attempt in range(1, replay.MAX_ATTEMPTS + 1):  # one attempt per replay
        queue.replay()
        row = QueuedWrite.objects.get(idempotency_key="doomed")
        assert row.attempts == attempt
    assert row.state == "dead" and "always fails" in row.last_error
    assert queue.replay().failed == 0  # dead letters wait for a person
    response = admin_client.post("/admin/resilience_crm/queuedwrite/", {
        "action": "requeue", "_selected_action": [row.pk]})
    assert response.status_code == 302
    assert QueuedWrite.objects.get(pk=row.pk).state == "pending"


def test_the_queue_replays_by_itself_when_the_write_circuit_closes(queued):
    outage()
    protected.submit("test.contact", contact(1), idempotency_key="k1")
    get_breaker("crm.write").reset(reason="database back")
    wait_until(lambda: QueuedWrite.objects.filter(state="applied").exists(),
               "the automatic replay")
    assert Contact.objects.count() == 1


def test_a_write_queued_after_the_replay_is_replayed_by_the_flusher_round(queued,
                                                                         monkeypatch):
    """A write queued after the replay that followed an outage (this worker still saw the
    circuit open) waits for no next outage: the flusher's round replays it."""
    monkeypatch.setattr(replay, "_next_look", 0.0)  # and put back after the test's far clock
    outage()
    protected.submit("test.contact", contact(1), idempotency_key="k1")
    assert not replay.replay_due(now=1e9)  # the write circuit is still open: nothing asked
    recovery()  # forced closed: no transition to closed, so no replay on close
    assert not replay.replay_due(now=1e9)  # looked once within REPLAY_EVERY already
    assert replay.replay_due(now=1e9 + replay.REPLAY_EVERY)
    wait_until(lambda: QueuedWrite.objects.filter(state="applied").exists(),
               "the flusher round's replay")
    assert Contact.objects.count() == 1
    assert not replay.replay_due(now=1e9 + 2 * replay.REPLAY_EVERY)  # nothing waits now


def test_without_redis_a_write_during_an_outage_is_refused_plainly(settings, postgres, db):
    settings.RESILIENCE_CRM = {}  # the embedded default: local-memory cache
    outage()
    with pytest.raises(QueueUnavailable) as raised:
        protected.submit("test.contact", contact(1), idempotency_key="k1")
    assert raised.value.status == 503 and raised.value.code == "QUEUE_UNAVAILABLE"


def test_with_redis_down_a_write_during_an_outage_is_refused(settings, redis_proxy,
                                                            postgres, db):
    settings.RESILIENCE_CRM = {"STORE": "database", "CACHE_ALIAS": "proxied"}
    redis_proxy.stalled = True
    redis_proxy.drop()
    outage()
    with pytest.raises(QueueUnavailable):
        protected.submit("test.contact", contact(1), idempotency_key="k1")


@pytest.mark.parametrize("database", ["up", "down"])
@pytest.mark.parametrize("name, payload, key, entity, field", [
    ("test.contact", contact(1), "k" * 256, "", "idempotency_key"),
    ("test.contact", contact(1), "k1", "e" * 201, "entity"),
    ("test.modelled", contact(1, company="c" * 201), "k1", "", "company"),
    ("test.modelled", contact(1, no_such_field=1), "k1", "", "no_such_field"),
    ("test.modelled", contact(1, conversations=[1]), "k1", "", "conversations"),  # no column
])
def test_a_write_the_database_would_refuse_is_refused_before_it_is_queued(
        queued, database, name, payload, key, entity, field):
    if database == "down":
        outage()
    with pytest.raises(InvalidWrite) as raised:
        protected.submit(name, payload, idempotency_key=key, entity=entity)
    assert (raised.value.status, raised.value.code) == (400, "INVALID_WRITE")
    assert list(raised.value.errors) == [field]
    assert probe.stream_length() == 0 and not QueuedWrite.objects.exists()
    assert not Contact.objects.exists()


def test_a_stream_entry_the_table_cannot_hold_is_a_dead_letter_and_the_rest_apply(queued):
    outage()
    protected.submit("test.contact", contact(1), idempotency_key="k1")
    # An entry queued before writes were checked: a key longer than the column.
    cache = caches["redis"]
    get_redis_connection("redis").xadd(cache.make_key(stream.STREAM_KEY), {
        "name": "test.contact", "key": "k" * 300, "payload": '{"name": "Poison"}',
        "hash": "0" * 64, "entity": ""})
    protected.submit("test.contact", contact(2), idempotency_key="k2")
    recovery()
    report = queue.replay()
    assert (report.moved, report.applied) == (3, 2)
    assert probe.stream_length() == 0
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "c1@example.com", "c2@example.com"]
    dead = QueuedWrite.objects.get(state="dead")
    assert dead.payload == {"name": "Poison"} and "k" * 300 in dead.last_error
    assert "idempotency_key" in dead.last_error


def test_a_write_the_database_refuses_on_replay_is_a_dead_letter_at_once(queued):
    """A write no attempt can fix does not hold up the writes of its entity behind it."""
    outage()
    protected.submit("test.contact", contact(1), idempotency_key="k1", entity="acme")
    # test.contact names no model: nothing checks the name's length before the database.
    protected.submit("test.contact", contact(2, name="n" * 201), idempotency_key="k2",
                     entity="acme")
    protected.submit("test.contact", contact(3), idempotency_key="k3", entity="acme")
    recovery()
    report = queue.replay()
    assert (report.applied, report.dead) == (2, 1)
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "c1@example.com", "c3@example.com"]
    dead = QueuedWrite.objects.get(idempotency_key="k2")
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert dead.last_error.startswith("DataError")


def test_a_database_that_fails_during_replay_stops_it_and_keeps_the_write(
        queued, unreachable_database):
    unreachable[:] = [unreachable_database]
    outage()
    protected.submit("test.unreachable", {"n": 1}, idempotency_key="k1")
    protected.submit("test.contact", contact(1), idempotency_key="k2")
    recovery()
    report = queue.replay()
    assert report.stopped and report.applied == 0
    row = QueuedWrite.objects.get(idempotency_key="k1")
    assert row.state == "applying" and row.lease_owner  # taken over when its lease ends
    assert QueuedWrite.objects.get(idempotency_key="k2").state == "pending"


def test_writes_still_in_redis_count_wherever_the_queue_depth_shows(queued, admin_client):
    outage()
    for n in range(3):
        protected.submit("test.contact", contact(n), idempotency_key=f"k{n}")
    QueuedWrite.objects.create(name="test.contact", idempotency_key="old", payload={},
                               payload_hash="x", state=QueuedWrite.State.FAILED)

    html = admin_client.get(reverse("admin:resilience_crm_dashboard")).content.decode()
    assert ('Queued writes: <strong id="queue-pending">4</strong> waiting\n      '
            '(<span id="queue-in-redis">3</span> still in Redis, not yet in the database)'
            in html)
    text = admin_client.get(reverse("resilience:metrics")).content.decode()
    found = {(s.name, s.labels.get("state")): s.value
             for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == "resilience_queued_writes"}
    assert (found[("resilience_queued_writes", "in_redis")],
            found[("resilience_queued_writes", "failed")]) == (3, 1)
