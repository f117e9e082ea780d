"""A Redis Cluster master killed under load (SIGKILL): its replica is promoted; meanwhile the
circuits of its slots run on this worker's own breakers while the others stay shared, the
limiter follows ``FAIL_OPEN``, and no request answers 500; afterwards the circuits are back on
the cluster, and one the failover lost is seeded from its durable row, its generations going
on."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connections
from django.test import Client

from resilience_crm import get_breaker, metrics, testutils
from resilience_crm.breakers import registry
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.models import Circuit, CircuitEvent
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.principals import Principal
from resilience_crm.signals import shared_store_recovered
from tests.failing import trip
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

#: Seconds the cluster has to promote a replica (node timeout 1 s, then an election), on a
#: loaded machine.
FAILOVER_PATIENCE = 60
THREADS = 4


@pytest.fixture
def failover(settings, cluster_cache, transactional_db, unguarded):
    cluster = cluster_cache
    settings.ROOT_URLCONF = "tests.cluster_urls"
    settings.CACHES = {**settings.CACHES, "cluster": cluster.cache(
        SOCKET_TIMEOUT=0.5, SOCKET_CONNECT_TIMEOUT=0.5,
        SERIALIZER="resilience_crm.cache_serializer.SignedJSONSerializer")}
    settings.RESILIENCE_CRM = {
        **settings.RESILIENCE_CRM, "STORE": "redis", "RATELIMIT_STORE": "redis",
        "CACHE_ALIAS": "cluster", "STORE_RETRY_INTERVAL": 0.2, "SNAPSHOT_TTL": 0.05,
        "ANONYMOUS_TIER": "cluster", "TIERS": {"cluster": {"read": "1000000/min"}},
        "CIRCUIT_DEFAULTS": {"failure_threshold": 2, "reset_timeout": 300,
                             "max_reset_timeout": 300},
    }
    killed: list[int] = []
    yield cluster, killed
    for port in killed:  # back as a replica of the promoted one, for the tests after this
        cluster.restart(port)
    cluster.wait_healthy()


def test_a_master_killed_under_load(failover) -> None:
    cluster, killed = failover
    store = RedisStore("cluster")
    circuits = [f"fo.{name}" for name in cluster.spread(lambda name: store.key(f"fo.{name}"))]
    victim, others = circuits[0], circuits[1:]
    master = cluster.master_of(store.key(victim))
    limits = limiter.get_store()
    ips = [f"10.9.{n // 256}.{n % 256}" for n in range(1, 200)]
    # A client whose limits lie on the master to be killed, and one elsewhere.
    key_of = {ip: limiter.limits_for(Principal(key=f"ip:{ip}", tier="cluster"), "read",
                                     "cluster-circuit", limits)[0].key for ip in ips}
    ips = [next(ip for ip in ips if cluster.master_of(key_of[ip]) == master),
           next(ip for ip in ips if cluster.master_of(key_of[ip]) != master)]

    for name in others:  # on the cluster before the load (no seeding from its threads)
        get_breaker(name).call(lambda: None)
    trip(get_breaker(victim))  # open at generation 1, on the cluster and in its row
    testutils.write_now()
    assert Circuit.objects.get(name=victim).generation == 1

    answers: Counter[tuple[str, int, str]] = Counter()
    on_local: Counter[str] = Counter()  # answers given on this worker's own breaker
    lock, stop = threading.Lock(), threading.Event()

    def load() -> None:
        client = Client()
        try:
            while not stop.is_set():
                for name in circuits:
                    for ip in ips:
                        reply = client.get(f"/c/{name}/", REMOTE_ADDR=ip)
                        code = (reply.json().get("code", "") if reply.status_code != 200
                                else "")
                        local = get_breaker(name).using_fallback
                        with lock:
                            answers[(name, reply.status_code, code)] += 1
                            on_local[name] += local
        finally:
            connections.close_all()

    recoveries = []

    def recovered(sender, **kwargs) -> None:
        recoveries.append(sender)

    shared_store_recovered.connect(recovered)
    threads = [threading.Thread(target=load) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(answers.values()) > 100, "the load to start")
        killed.append(master)
        cluster.kill(master)
        wait_until(lambda: metrics.value("store_errors", circuit=victim) > 0,
                   "the victim's circuit to notice", timeout=FAILOVER_PATIENCE)
        wait_until(lambda: metrics.value("ratelimit_store_errors") > 0,
                   "the limiter to notice", timeout=FAILOVER_PATIENCE)
        cluster.wait_failover(master)
        served = sum(answers.values())
        # Back on the cluster: every shard answers again, and the load goes on through it.
        wait_until(lambda: all(get_breaker(name).snapshot()["store"] == "shared"
                               for name in circuits)
                   and sum(answers.values()) > served + 100 and registry.get_store().available,
                   "the circuits to be back on the cluster", timeout=FAILOVER_PATIENCE)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        shared_store_recovered.disconnect(recovered)

    # No 500, no refusal by the limiter (it failed open), only the open circuit's 503.
    assert {(name, status, code) for name, status, code in answers} == {
        (victim, 503, "CIRCUIT_OPEN"), *((name, 200, "") for name in others)}
    # Only the killed master's circuit fell back to a local breaker; the others stayed on
    # the cluster throughout.
    assert on_local[victim] > 0 and all(on_local[name] == 0 for name in others)
    assert all(metrics.value("store_errors", circuit=name) == 0 for name in others)
    # The promoted replica kept the state: still open, generation 1, shared.
    assert store.read(victim)["gen"] == 1
    assert get_breaker(victim).snapshot()["store"] == "shared"
    # The outage ended once, on the promoted replica: pending manual changes are applied
    # and the local-breaker alert re-armed by that signal's receivers.
    assert len(recoveries) == 1

    # A failover loses the writes its replica had not received yet: here, the whole circuit.
    # A worker that never saw it seeds it from its row, and its generations go on.
    cluster.node(cluster.master_of(store.key(victim))).delete(store.key(victim))
    registry.clear()
    get_breaker(victim).reset(reason="after the failover")
    testutils.write_now()
    assert store.read(victim)["gen"] == 2
    assert sorted(CircuitEvent.objects.filter(circuit__name=victim).exclude(source="local")
                  .values_list("generation", flat=True)) == [1, 2]
