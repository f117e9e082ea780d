"""The shared store failing or forgetting: generations never go backwards, and no error of
the store ever reaches the caller.

"Redis lost its data" is a real FLUSHDB or a key deletion; "Redis answers with an error" is a
local server speaking the Redis protocol (``tests/resp_server.py``) or a key of the wrong
type; "unreachable" is a port nothing listens on.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from resilience_crm import metrics
from resilience_crm.breakers import events, registry
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.control import steer
from resilience_crm.breakers.stores.failover import FailoverStore
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import Circuit, CircuitEvent
from tests.clock import Clock
from tests.failing import boom, trip
from tests.resp_server import ErrorRedis

pytestmark = pytest.mark.django_db

CIRCUIT = "test.failover"
TRIPS = {"failure_threshold": 2, "failure_rate_threshold": 0, "reset_timeout": 60,
         "max_reset_timeout": 60}


def transitions() -> list[tuple[int, str, str]]:
    events.flush()
    return list(CircuitEvent.objects.filter(circuit__name=CIRCUIT).order_by("generation")
                .values_list("generation", "from_state", "to_state"))


@pytest.fixture
def on_redis(redis_settings):
    redis_settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                                     "SNAPSHOT_TTL": 0, "CIRCUITS": {CIRCUIT: TRIPS}}
    return get_redis_connection("redis")


def lose(client, how: str) -> None:
    """Redis forgets the circuit, as a restart without persistence, an eviction or an expiry
    would make it."""
    if how == "flushdb":
        client.flushdb()
    else:
        assert client.delete(RedisStore("redis").key(CIRCUIT)) == 1


# Generations never go backwards ------------------------------------------------------------


@pytest.mark.parametrize("how", ["flushdb", "delete"])
def test_generations_go_on_above_the_durable_row_when_redis_loses_a_circuit(on_redis, how):
    breaker = registry.get_breaker(CIRCUIT)
    trip(breaker)
    breaker.reset(reason="fixed")
    events.flush()  # as the background flusher would have by now
    assert Circuit.objects.get(name=CIRCUIT).generation == 2

    lose(on_redis, how)
    trip(breaker)  # before the fix: generation 1 again, its event dropped as a duplicate

    assert transitions() == [(1, "closed", "open"), (2, "open", "closed"), (3, "closed", "open")]
    circuit = Circuit.objects.get(name=CIRCUIT)
    assert (circuit.state, circuit.generation) == (core.OPEN, 3)
    assert breaker.snapshot()["generation"] == 3


def test_a_saved_forced_state_survives_redis_losing_the_circuit(on_redis):
    until = timezone.now() + timedelta(hours=1)
    steer(CIRCUIT, core.FORCED_OPEN, reason="vendor outage", until=until, source="command")
    lose(on_redis, "flushdb")
    registry.clear()  # a worker that starts after the loss

    breaker = registry.get_breaker(CIRCUIT)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")
    snap = breaker.snapshot()
    assert (snap["state"], snap["generation"]) == (core.FORCED_OPEN, 1)
    assert abs((snap["until"] - until).total_seconds()) < 0.01
    stored = RedisStore("redis").read(CIRCUIT)
    assert (stored["reason"], stored["state"]) == ("vendor outage", core.FORCED_OPEN)


def test_a_forced_state_that_lapsed_is_not_seeded(on_redis):
    Circuit.objects.create(name=CIRCUIT, generation=4, forced_state=core.FORCED_OPEN,
                           forced_until=timezone.now() - timedelta(minutes=1))
    assert registry.get_breaker(CIRCUIT).snapshot()["state"] == core.CLOSED
    assert registry.get_breaker(CIRCUIT).snapshot()["generation"] == 4


def test_saved_overrides_with_empty_lists_reach_a_running_worker_after_the_loss(on_redis):
    Circuit.objects.create(name=CIRCUIT)
    seed_store = FailoverStore(RedisStore("redis"), seed=Circuit.objects.live_seed)
    worker = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS), seed_store, snapshot_ttl=0,
                     base_config=TRIPS)
    assert worker.call(lambda: "ok") == "ok"
    # Saved (say while Redis was down) without reaching the store, which then lost the key.
    overrides = {"failure_threshold": 1, "record_exceptions": [], "ignore_exceptions": []}
    Circuit.objects.filter(name=CIRCUIT).update(config=overrides)
    lose(on_redis, "delete")

    assert worker.state == core.CLOSED  # a step: seeded, and the overrides handed out
    assert worker.config.failure_threshold == 1
    with pytest.raises(ConnectionError):
        worker.call(boom)
    assert worker.state == core.OPEN


def test_overrides_handed_out_through_redis_keep_their_empty_lists(on_redis):
    first = registry.get_breaker(CIRCUIT)
    first.configure({"failure_threshold": 7, "record_exceptions": []})
    other = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS), RedisStore("redis"),
                    snapshot_ttl=0, base_config=TRIPS)
    other.state  # noqa: B018  (a step picks up the overrides)
    assert other.config.failure_threshold == 7


def test_without_the_database_a_lost_circuit_stays_local_rather_than_restart_at_zero(
        on_redis, django_db_blocker):
    breaker = registry.get_breaker(CIRCUIT)
    trip(breaker)
    lose(on_redis, "delete")
    with django_db_blocker.block():  # the durable row cannot be read
        assert breaker.snapshot()["store"] == "local"
    assert RedisStore("redis").read(CIRCUIT) is None  # nothing written at generation 0


# No store error escapes --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["wrong type", "malformed json"])
def test_a_damaged_key_falls_back_to_the_local_breaker(on_redis, damage):
    key = RedisStore("redis").key(CIRCUIT)
    if damage == "wrong type":
        on_redis.lpush(key, "not a string")
    else:
        on_redis.set(key, "{not json")
    breaker = registry.get_breaker(CIRCUIT)

    assert breaker.call(lambda: "answer") == "answer"
    assert breaker.using_fallback
    assert metrics.value("store_errors", circuit=CIRCUIT) == 1
    trip(breaker)  # the local breaker still protects


@pytest.mark.parametrize("cfg", ["{not json", "[1, 2]", 7])
def test_malformed_overrides_in_the_shared_state_are_ignored(on_redis, cfg, caplog):
    breaker = registry.get_breaker(CIRCUIT)
    assert breaker.call(lambda: "answer") == "answer"
    key = RedisStore("redis").key(CIRCUIT)
    state = json.loads(on_redis.get(key))
    on_redis.set(key, json.dumps({**state, "cv": state["cv"] + 1, "cfg": cfg}))

    assert breaker.call(lambda: "answer") == "answer"
    assert breaker.config.failure_threshold == TRIPS["failure_threshold"]
    assert "ignoring invalid overrides" in caplog.text
    trip(breaker)  # the shared breaker goes on protecting with its own settings


@pytest.mark.parametrize("error", [
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or FUNCTION KILL.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "ERR Error running script (call to f_0123): something unforeseen",
])
def test_an_error_reply_falls_back_to_the_local_breaker(settings, error, client):
    with ErrorRedis(error) as server:
        settings.CACHES = {**settings.CACHES, "erring": {
            "BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url(),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}}}
        settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "erring",
                                   "CIRCUITS": {CIRCUIT: TRIPS}}
        breaker = registry.get_breaker(CIRCUIT)

        assert breaker.call(lambda: "answer") == "answer"
        assert server.scripts_refused >= 1
        assert breaker.using_fallback
        assert metrics.value("store_errors", circuit=CIRCUIT) == 1
        response = client.get("/resilience/health/ready")
        assert response.status_code == 200
        assert response.json()["circuits"][CIRCUIT]["state"] == core.CLOSED


def test_a_database_store_error_falls_back_to_the_local_breaker(settings, unreachable_database):
    settings.RESILIENCE_CRM = {"STORE": "database", "DATABASE_ALIAS": unreachable_database,
                               "CIRCUITS": {CIRCUIT: TRIPS}}
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    breaker = registry.get_breaker(CIRCUIT)

    assert breaker.call(lambda: "answer") == "answer"
    assert breaker.using_fallback
    assert metrics.value("store_errors", circuit=CIRCUIT) == 1


class Unforeseen(MemoryStore):
    """A store with a bug: it fails in a way no store is meant to."""

    def __init__(self, clock, fail_records: bool = False) -> None:
        super().__init__(clock=clock)
        self.fail_records = fail_records

    def step(self, step):
        if step.entries or not self.fail_records:
            raise KeyError("a bug in a custom store")
        return super().step(step)


def test_any_exception_of_a_custom_shared_store_degrades():
    clock = Clock()
    store = FailoverStore(Unforeseen(clock), clock=clock, monotonic=clock)
    breaker = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS), store, clock=clock,
                      monotonic=clock)
    assert breaker.call(lambda: "answer") == "answer"
    assert breaker.using_fallback


def test_a_failure_to_record_never_replaces_the_callers_result_or_exception(caplog):
    clock = Clock()
    breaker = Breaker(CIRCUIT, core.Config.from_mapping(TRIPS | {"slow_call_duration": 1}),
                      Unforeseen(clock, fail_records=True), clock=clock, monotonic=clock)

    def slow():
        clock.now += 2  # a slow call: recorded at once, and the store fails then
        return "slow answer"

    assert breaker.call(slow) == "slow answer"
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert caplog.text.count("recording a call's outcome failed") == 2
