"""Every Redis use of the app on a real Redis Cluster of three masters (``tests.redis_cluster``,
started once per session): the breakers' and the limiter's scripts, the read cache, the write
queue, the metrics hashes. Each script runs on the cluster, which refuses keys of several
slots in one script (``CROSSSLOT``): the proof that every script's keys share a hash tag."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connections
from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import ResponseError

from crm_demo.crm.models import Contact
from resilience_crm import get_breaker, protected, spool, testutils
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.exceptions import CircuitOpenError, IdempotencyConflict
from resilience_crm.lua import REDIS_DOWN, LuaScript
from resilience_crm.observability import exposition
from resilience_crm.provider import probe, queue, stream
from resilience_crm.provider.cache import space_of
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.gcra import Limit
from resilience_crm.ratelimit.principals import Principal
from resilience_crm.ratelimit.stores.redis import SCRIPT as GCRA
from resilience_crm.ratelimit.stores.redis import RedisLimiterStore
from resilience_crm.redis_cluster import RedisClusterClient
from resilience_crm.signals import circuit_transition
from tests.failing import boom, trip
from tests.processes import ctx, run_processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

#: Worker processes of the concurrency test.
PROCESSES = 8
#: A script that touches each key it is given, so only the cluster can refuse it.
TOUCH = LuaScript("for i = 1, #KEYS do redis.call('GET', KEYS[i]) end return #KEYS")


@pytest.fixture
def on_cluster(settings, cluster_cache, db) -> Iterator[Any]:
    """The app's live state on the cluster: breakers, limits, read cache and write queue."""
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "STORE": "redis",
                               "RATELIMIT_STORE": "redis", "CACHE_ALIAS": "cluster"}
    yield cluster_cache
    testutils.reset()


def test_the_cache_alias_talks_to_every_master(on_cluster) -> None:
    cache = caches["cluster"]
    assert isinstance(cache.client, RedisClusterClient)
    names = on_cluster.spread(cache.make_key)
    cache.set_many({name: {"n": i} for i, name in enumerate(names)}, timeout=60)
    assert cache.get_many(names) == {name: {"n": i} for i, name in enumerate(names)}
    assert cache.delete_many(names) == 3
    assert cache.get_many(names) == {}


def test_a_script_with_keys_of_two_slots_is_refused_by_the_cluster(on_cluster) -> None:
    """The control for every test below: a cluster runs a script only on keys of one slot."""
    client = get_redis_connection("cluster")
    assert TOUCH(client, ["rl:{u:1}:a", "rl:{u:1}:b"], []) == 2
    with pytest.raises(ResponseError, match="hash to the same slot"):
        TOUCH(client, ["rl:{u:1}:a", "rl:{u:2}:a"], [])


def test_a_script_whose_reply_is_lost_runs_once_whatever_the_retries(
        settings, cluster_cache) -> None:
    """The reply of a script that outlasts the socket timeout is lost: the client must not
    send it again, even with ``CLUSTER_RETRIES`` asking it to retry other commands."""
    settings.CACHES = {**settings.CACHES, "cluster": cluster_cache.cache(
        CLUSTER_RETRIES=3, SOCKET_TIMEOUT=0.3)}
    client = get_redis_connection("cluster")
    slow = LuaScript("redis.call('INCR', KEYS[1]) local t = redis.call('TIME') "
                     "local stop = t[1] * 1000000 + t[2] + 600000 "
                     "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] > stop "
                     "return 1")
    key = f"slow:{uuid.uuid4().hex}"
    with pytest.raises(REDIS_DOWN):
        slow(client, [key], [])
    wait_until(lambda: cluster_cache.node(cluster_cache.master_of(key)).get(key) is not None,
               "the script to end")
    assert int(cluster_cache.node(cluster_cache.master_of(key)).get(key)) == 1


def test_breakers_step_on_every_master_and_generations_go_on(on_cluster, settings) -> None:
    store = RedisStore("cluster")
    names = on_cluster.spread(lambda name: store.key(f"cl.{name}"))
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "CIRCUITS": {
        f"cl.{name}": {"failure_threshold": 2, "reset_timeout": 60} for name in names}}
    for name in names:
        breaker = get_breaker(f"cl.{name}")
        assert breaker.call(lambda: "ok") == "ok"
        trip(breaker)
        snapshot = breaker.snapshot()
        assert (snapshot["state"], snapshot["store"], snapshot["generation"]) == (
            "open", "shared", 1)
        assert store.read(f"cl.{name}")["state"] == "open"
        breaker.reset(reason="test")
        assert store.read(f"cl.{name}")["gen"] == 2
        assert breaker.call(lambda: "ok") == "ok"


def test_limits_of_a_request_are_decided_together_in_one_slot(on_cluster, settings) -> None:
    """A client's tier and endpoint limits, and then a global limit on top: one script per
    decision on the cluster, all or none, exact."""
    settings.RESILIENCE_CRM = {
        **settings.RESILIENCE_CRM,
        "TIERS": {**settings.RESILIENCE_CRM.get("TIERS", {}), "t": {"read": "5/min"}},
        "ENDPOINTS": {"ep": {"read": "3/min"}},
    }
    users = [Principal(key=f"u:{i}", tier="t") for i in range(1, 4)]
    store = limiter.get_store()
    assert isinstance(store, RedisLimiterStore)
    # Three clients whose keys lie on different masters, each with two limits of its own.
    assert len({on_cluster.master_of(limit.key) for user in users
                for limit in limiter.limits_for(user, "read", "ep", store)}) > 1
    for user in users:
        decisions = [limiter.decide(user, "read", "ep").allowed for _ in range(5)]
        assert decisions == [True, True, True, False, False]  # the endpoint's 3
        # Refused by the endpoint's limit, the tier's kept its 2 remaining.
        assert [limiter.decide(user, "read").allowed for _ in range(3)] == [True, True, False]

    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "GLOBAL_LIMITS": {"write": "4/min"},
                               "TIERS": {**settings.RESILIENCE_CRM["TIERS"],
                                         "t": {"write": "3/min"}}}
    limits = limiter.limits_for(users[0], "write", None, store)
    assert len(limits) == 2 and {on_cluster.master_of(limit.key) for limit in limits} == {
        on_cluster.master_of(limits[0].key)}
    answers = [limiter.decide(user, "write").allowed for user in users for _ in range(2)]
    # 4 in all: u:1 twice, u:2 twice, then the global limit refuses u:3.
    assert answers == [True, True, True, True, False, False]
    # A refusal by the global limit charged u:3's own limit nothing.
    assert store.client.get(limiter.limits_for(users[2], "write", None, store)[0].key) is None


def test_an_addresss_failures_are_checked_a_step_before_the_decision_on_the_cluster(
        on_cluster, settings) -> None:
    """The address's key lies in another slot than the client's: not in the decision's
    script (the cluster would refuse it), but peeked at just before, and refusing all the
    same, the client's own limit uncharged."""
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "TIERS": {"t": {"read": "5/min"}}}
    user = Principal(key="u:1", tier="t")
    store = limiter.get_store()
    assert isinstance(store, RedisLimiterStore) and not store.checks_in_step

    def failures(store: Any, scale: float) -> tuple[Limit, ...]:
        return (Limit(store.key("ip:192.0.2.1", "authfail:60"), "auth_failures.60s", 2, 60),)

    address = failures(store, 1)[0].key
    assert store.client.keyslot(address) != store.client.keyslot(
        limiter.limits_for(user, "read", None, store)[0].key)
    check = limiter.Check(failures, "auth")
    assert limiter.decide(user, "read", checking=check).allowed
    for _ in range(2):
        limiter.decide_limits(failures, op_class="auth")
    refused = limiter.decide(user, "read", checking=check)
    assert not refused.allowed and refused.violated == ("auth_failures.60s",)
    assert [limiter.decide(user, "read").allowed for _ in range(5)] == [True] * 4 + [False]


def test_gcra_script_refuses_keys_of_two_clients_on_the_cluster(on_cluster) -> None:
    """Had the keys of a decision two tags, the cluster would refuse it: the hash tag is what
    keeps a decision in one script."""
    store = RedisLimiterStore("cluster")
    keys = [store.key("u:1", "read:60"), store.key("u:2", "read:60")]
    with pytest.raises(ResponseError, match="hash to the same slot"):
        GCRA(store.client, keys + [f"{key}:r" for key in keys],
             ["", 1, 1_000_000, 0, 0, 1_000_000, 0, 0])


def test_open_circuit_fails_fast_on_the_cluster(on_cluster, settings) -> None:
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "CIRCUITS": {
        "cl.fast": {"failure_threshold": 1, "reset_timeout": 60}}}
    breaker = get_breaker("cl.fast")
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert protected.read("k", lambda: 1 / 0, circuit="cl.fast", fallback=lambda: "degraded") \
        == "degraded"


def test_read_cache_versions_removals_and_leases_on_the_cluster(on_cluster) -> None:
    """Entry, space version and removal mark of a key lie in different slots: read together
    slot by slot, bumped in one pipeline."""
    calls: list[int] = []

    def load() -> dict[str, int]:
        calls.append(1)
        return {"v": len(calls)}

    def read() -> Any:
        protected.cache.forget_local()  # the shared cache, not this process's layer
        return protected.read("cl:contacts:1", load)

    assert read() == {"v": 1} and read() == {"v": 1}
    protected.cache.invalidate(space_of("cl:contacts:1"))
    assert read() == {"v": 2}
    protected.cache.remove("cl:contacts:1")
    assert read() == {"v": 3} and len(calls) == 3
    entries, version = protected.cache.get_many(["cl:contacts:1", "cl:contacts:2"],
                                                space_of("cl:contacts:1"))
    assert list(entries) == ["cl:contacts:1"] and version == 1
    assert protected.cache.take_lease("cl:contacts:1", "a", 10)
    assert not protected.cache.take_lease("cl:contacts:1", "b", 10)
    protected.cache.release_lease("cl:contacts:1", "a")
    assert protected.cache.take_lease("cl:contacts:1", "b", 10)


@protected.write_handler("cluster.contact", key="contacts")
def create_contact(payload: dict[str, str]) -> dict[str, int]:
    return {"id": Contact.objects.create(**payload).pk}


def test_writes_queue_in_the_clusters_stream_and_replay_once(settings, cluster_cache,
                                                              transactional_db) -> None:
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "cluster"}
    get_breaker("crm.write").force("forced_open", reason="database outage")
    for n in range(6):
        for _ in range(2):  # a client that did not hear back sends it again
            payload = {"name": f"C {n}", "email": f"c{n}@example.com"}
            assert protected.submit("cluster.contact", payload, idempotency_key=f"k{n}").queued
    with pytest.raises(IdempotencyConflict):
        protected.submit("cluster.contact", {"name": "x", "email": "x@example.com"},
                         idempotency_key="k3")
    assert probe.stream_length() == 6 and not Contact.objects.exists()
    get_breaker("crm.write").force("forced_closed", reason="database back")
    report = queue.replay()
    assert (report.moved, report.applied, report.failed) == (6, 6, 0)
    assert probe.stream_length() == 0 and Contact.objects.count() == 6
    cache = caches["cluster"]
    assert get_redis_connection("cluster").exists(stream.marker(cache, "k3")) == 0


def test_metrics_hashes_spool_and_exposition_on_the_cluster(on_cluster, settings) -> None:
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "CIRCUITS": {
        "cl.metrics": {"failure_threshold": 5}}}
    breaker = get_breaker("cl.metrics")
    for _ in range(3):
        breaker.call(lambda: "ok")
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    limiter.decide(Principal(key="u:9", tier="free"), "read")
    assert exposition.push() > 1  # several hashes, on several masters
    assert exposition.totals("calls")[("cl.metrics", "success")] == 3
    assert exposition.totals("calls")[("cl.metrics", "failure")] == 1
    text = exposition.render().decode()
    assert 'resilience_calls_total{circuit="cl.metrics",outcome="success"} 3.0' in text

    spool.keep("cl-test", [{"n": 1}, {"n": 2}])
    assert spool.length("cl-test") == 1
    written: list[Any] = []
    assert spool.drain("cl-test", written.extend) == 2 and written == [{"n": 1}, {"n": 2}]


def test_a_script_whose_slot_moved_follows_the_redirection_once(on_cluster) -> None:
    """After a resharding the client's layout is stale: the old master answers MOVED, which
    means it ran nothing, and the script goes on to the new one, where it runs once."""
    store = RedisLimiterStore("cluster")
    limits = limiter.limits_for(Principal(key="u:moved", tier="free"), "read", None, store)
    assert limiter.decide(Principal(key="u:moved", tier="free"), "read").source != "fallback"
    store.client.delete(*[limit.key for limit in limits])
    source = on_cluster.master_of(limits[0].key)
    on_cluster.move_slot(limits[0].key, next(port for port in on_cluster.masters()
                                             if port != source))
    allowed, [outcome, *_] = store.evaluate(limits)
    assert allowed and outcome.remaining == limits[0].limit - 1  # charged once
    allowed, [outcome, *_] = store.evaluate(limits)  # the client has learnt the new layout
    assert allowed and outcome.remaining == limits[0].limit - 2


def test_limits_are_exact_across_processes_on_the_cluster(settings, cluster_cache,
                                                          transactional_db) -> None:
    """Invariant 3 on the cluster: 8 processes released together, two clients with 20 each
    under a global 30: exactly 30 admitted, neither client over its own 20."""
    settings.CACHES = {**settings.CACHES, "cluster": cluster_cache.cache(
        SOCKET_TIMEOUT=5, SOCKET_CONNECT_TIMEOUT=5,  # 8 processes on two loaded cores
        SERIALIZER="resilience_crm.cache_serializer.SignedJSONSerializer")}
    settings.RESILIENCE_CRM = {
        **settings.RESILIENCE_CRM, "STORE": "redis", "RATELIMIT_STORE": "redis",
        "CACHE_ALIAS": "cluster", "TIERS": {"t": {"read": "20/day"}},
        "GLOBAL_LIMITS": {"read": "30/day"}}
    users = [Principal(key="u:px1", tier="t"), Principal(key="u:px2", tier="t")]
    connections.close_all()  # the children open their own
    barrier = ctx.Barrier(PROCESSES)
    admitted = [ctx.Value("i", 0) for _ in users]
    fell_back = ctx.Value("i", 0)

    def worker(index: int) -> None:
        barrier.wait(timeout=30)
        for _ in range(8):
            for user, count in zip(users, admitted, strict=True):
                decision = limiter.decide(user, "read")
                with count.get_lock(), fell_back.get_lock():
                    count.value += decision.allowed
                    fell_back.value += decision.source == "fallback"
        connections.close_all()

    run_processes(worker, count=PROCESSES, timeout=120)
    assert fell_back.value == 0  # every decision on the cluster, none on a worker's own
    assert sum(count.value for count in admitted) == 30
    assert all(count.value <= 20 for count in admitted)


def test_half_open_admits_its_trials_once_across_processes_on_the_cluster(
        settings, cluster_cache, transactional_db) -> None:
    """Invariants 1 and 2 on the cluster: 8 processes released together on a circuit past
    its reset_timeout get exactly ``half_open_max_calls`` trial permits, and the move to
    half-open is announced by one of them only."""
    settings.CACHES = {**settings.CACHES, "cluster": cluster_cache.cache(
        SOCKET_TIMEOUT=5, SOCKET_CONNECT_TIMEOUT=5,  # 8 processes on two loaded cores
        SERIALIZER="resilience_crm.cache_serializer.SignedJSONSerializer")}
    name = f"cl.trials.{uuid.uuid4().hex[:8]}"
    settings.RESILIENCE_CRM = {
        **settings.RESILIENCE_CRM, "STORE": "redis", "CACHE_ALIAS": "cluster",
        "CIRCUITS": {name: {"failure_threshold": 2, "reset_timeout": 1, "max_reset_timeout": 1,
                            "half_open_max_calls": 2}}}
    breaker = get_breaker(name)
    trip(breaker)
    until = breaker.snapshot()["until"]
    wait_until(lambda: timezone.now() > until, "the reset_timeout to pass")
    testutils.reset()  # the children fork without this process's view of the circuit
    connections.close_all()  # the children open their own
    barrier = ctx.Barrier(PROCESSES)
    permits, announced = ctx.Value("i", 0), ctx.Value("i", 0)

    def count(sender, to_state, local, **kwargs) -> None:
        if to_state == "half_open" and not local:
            with announced.get_lock():
                announced.value += 1

    def worker(index: int) -> None:
        circuit_transition.connect(count, weak=False)
        barrier.wait(timeout=30)
        try:
            get_breaker(name).allow()
        except CircuitOpenError:
            return
        with permits.get_lock():
            permits.value += 1

    run_processes(worker, count=PROCESSES, timeout=120)
    assert (permits.value, announced.value) == (2, 1)
