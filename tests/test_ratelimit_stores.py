"""The limiter stores: ``gcra.lua`` in a real Redis and ``resilience_crm_gcra`` in a real
PostgreSQL decide exactly like ``gcra.evaluate``, the in-process store too, and Redis keys are
small and expire once their bucket is full."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import US, Limit
from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore
from resilience_crm.ratelimit.stores.redis import RedisLimiterStore
from tests.clock import Clock
from tests.resp_server import ErrorRedis

NOW = 1_700_000_000 * US

pytestmark = pytest.mark.redis


@pytest.fixture
def store(redis_cache: Any) -> RedisLimiterStore:
    return RedisLimiterStore("redis")


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.slow),
                        pytest.param("database", marks=pytest.mark.postgres)])
def shared_store(request: Any) -> Any:
    """Each shared store (Redis, Redis Cluster, PostgreSQL), with a way to read the TATs it
    keeps."""
    if request.param in ("redis", "cluster"):
        if request.param == "cluster":
            request.getfixturevalue("cluster_cache")
        redis = (request.getfixturevalue("store") if request.param == "redis"
                 else RedisLimiterStore("cluster"))
        return redis, lambda limits: [
            None if (tat := redis.client.get(limit.key)) is None else int(tat)
            for limit in limits]
    request.getfixturevalue("postgres")
    request.getfixturevalue("db")
    database = DatabaseLimiterStore()
    return database, lambda limits: database.inspect(limits).tats


def limits_of(store: Any, specs: list[tuple[int, int, bool]], principal: str) -> list[Limit]:
    return [Limit(store.key(principal, f"t:read:{i}"), f"p{i}", n, t, shadow=s)
            for i, (n, t, s) in enumerate(specs)]


@hypothesis_settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 90), st.booleans()),
                   min_size=1, max_size=3),
    steps=st.lists(st.tuples(st.integers(0, 20 * US), st.integers(1, 3)), min_size=1,
                   max_size=25),
)
def test_lua_and_sql_decide_exactly_like_python(shared_store, specs, steps) -> None:
    store, stored_tats = shared_store
    principal = uuid.uuid4().hex
    limits = limits_of(store, specs, principal)
    tats: list[int | None] = [None] * len(limits)
    now = NOW
    for gap, cost in steps:
        now += gap
        expected_allowed, expected, new = gcra.evaluate(limits, tats, now, cost)
        allowed, outcomes = store.evaluate(limits, cost, now_us=now)
        assert (allowed, outcomes) == (expected_allowed, expected)
        tats = [t if t is not None else old for t, old in zip(new, tats, strict=True)]
        assert stored_tats(limits) == tats


@hypothesis_settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 90),
                             st.sampled_from(["enforced", "shadow", "checked"])),
                   min_size=1, max_size=4),
    steps=st.lists(st.tuples(st.integers(0, 20 * US), st.integers(1, 3), st.booleans()),
                   min_size=1, max_size=25),
)
def test_checked_limits_refuse_and_are_never_charged_in_lua_as_in_python(
        store, specs, steps) -> None:
    """Limits only checked (an address's failures, say) refuse the whole request when they
    do not conform, and are never charged: other steps charge them (``spend``)."""
    principal = uuid.uuid4().hex
    limits = [Limit(store.key(principal, f"t:{i}"), f"p{i}", n, t, shadow=mode == "shadow",
                    checked=mode == "checked") for i, (n, t, mode) in enumerate(specs)]
    tats: list[int | None] = [None] * len(limits)
    now = NOW
    for gap, cost, spend in steps:
        now += gap
        if spend:  # a failure elsewhere charges each checked limit once
            for i, limit in enumerate(limits):
                if limit.checked:
                    charged = Limit(limit.key, limit.policy, limit.limit, limit.period)
                    store.evaluate([charged], now_us=now)
                    tats[i] = gcra.evaluate([charged], [tats[i]], now)[2][0] or tats[i]
        expected_allowed, expected, new = gcra.evaluate(limits, tats, now, cost)
        assert store.evaluate(limits, cost, now_us=now) == (expected_allowed, expected)
        assert all(tat is None for tat, limit in zip(new, limits, strict=True)
                   if limit.checked)
        tats = [t if t is not None else old for t, old in zip(new, tats, strict=True)]
        assert [None if (tat := store.client.get(limit.key)) is None else int(tat)
                for limit in limits] == tats


def test_memory_store_runs_the_same_arithmetic() -> None:
    clock = Clock(NOW / US)
    memory = MemoryLimiterStore(clock=clock)
    limits = [Limit(memory.key("u:1", "t:read:60"), "p", 3, 60)]
    results = [memory.evaluate(limits)[0] for _ in range(4)]
    assert results == [True, True, True, False]
    clock.now += 20
    assert memory.evaluate(limits)[0]
    assert not memory.evaluate(limits)[0]


def test_redis_uses_its_own_clock_and_keys_expire_when_full(store, monkeypatch) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # this worker's clock is off
    limits = [Limit(store.key("u:7", "t:read:60"), "p", 6, 60)]
    seconds, micros = store.client.time()
    before = seconds * US + micros
    allowed, [outcome] = store.evaluate(limits)
    seconds, micros = store.client.time()
    after = seconds * US + micros
    assert allowed and outcome.remaining == 5 and outcome.reset_us == 10 * US
    ttl_ms = store.client.pttl(limits[0].key)
    assert 9_000 < ttl_ms <= 10_000
    tat = int(store.client.get(limits[0].key))
    assert before + 10 * US <= tat <= after + 10 * US  # Redis's now, not the worker's


def test_keys_carry_the_principal_as_a_hash_tag(store) -> None:
    key = store.key("u:42", "t:read:3600")
    assert key.startswith("rcrm-test:")
    assert "{u:42}" in key and key.count("{") == 1


def test_memory_per_key_is_at_most_100_bytes(store) -> None:
    limits = [Limit(store.key("u:1234567", "write:3600"), "p", 100, 3600)]
    store.evaluate(limits)
    assert store.client.memory_usage(limits[0].key) <= 100


def test_unreachable_redis_raises_store_unavailable(settings) -> None:
    settings.CACHES = {**settings.CACHES, "down": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
    }}
    down = RedisLimiterStore("down")
    with pytest.raises(StoreUnavailable):
        down.evaluate([Limit(down.key("u:1", "x"), "p", 1, 1)])


@pytest.mark.parametrize("reply", [
    b":1\r\n",  # an integer
    b"*2\r\n:1\r\n:1\r\n",  # too short for one limit
    b"$2\r\nok\r\n",  # a string
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",  # and SCRIPT LOAD fails too
])
def test_a_reply_that_is_not_the_scripts_is_store_unavailable(settings, reply) -> None:
    with ErrorRedis(reply=reply) as server:
        settings.CACHES = {**settings.CACHES, "odd": {
            "BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url(),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}}}
        odd = RedisLimiterStore("odd")
        with pytest.raises(StoreUnavailable):
            odd.evaluate([Limit(odd.key("u:1", "x"), "p", 1, 1)])
        assert server.scripts_refused >= 1


def test_memory_store_drops_full_buckets_and_does_not_sweep_live_keys_on_every_decision(
        monkeypatch) -> None:
    from resilience_crm.ratelimit.stores import memory as ratelimit_memory

    monkeypatch.setattr(ratelimit_memory, "SWEEP_AT", 4)
    clock = Clock(NOW / US)
    memory = MemoryLimiterStore(clock=clock)
    for i in range(2):  # full again after 1 s
        memory.evaluate([Limit(f"short{i}", "p", 10, 10)])
    clock.now += 2
    for i in range(5):  # live for an hour
        memory.evaluate([Limit(f"long{i}", "p", 10, 36_000)])
    assert set(memory._tats) == {f"long{i}" for i in range(5)}  # the full ones were dropped
    memory.evaluate([Limit("long5", "p", 10, 36_000)])  # 5 live keys: swept, all kept
    kept = memory._tats
    memory.evaluate([Limit("long6", "p", 10, 36_000)])
    assert memory._tats is kept  # the next sweep waits until the store has doubled
