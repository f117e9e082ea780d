"""The Redis store against a real Redis: ``step.lua`` must behave exactly like ``core.step``.

Runs where ``REDIS_URL`` names a Redis (e.g. ``redis://127.0.0.1:6379/1``) and skips with the
reason where it is unset; ``RESILIENCE_CRM_REQUIRE_SERVICES=1`` turns that skip into a failure.
The Redis-down tests need no Redis: they point a cache alias at a closed port.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from redis import exceptions as redis_exceptions

from resilience_crm.breakers import machine as core
from resilience_crm.breakers.stores.base import Step
from resilience_crm.breakers.stores.redis import STATE_TTL_MS, RedisStore
from resilience_crm.exceptions import StoreUnavailable
from tests.services import require_service

ALIAS = "resilience_redis_store_test"
DOWN_ALIAS = "resilience_redis_store_down"
START = 1_700_000_000_000  # ms; any 13-digit time


@pytest.fixture
def store(settings: Any) -> Iterator[RedisStore]:
    """A RedisStore on a cache alias of its own, with a key prefix no other test shares."""
    redis_url = django_settings.REDIS_URL
    require_service("Redis", bool(redis_url), "REDIS_URL is not set and none was found")
    prefix = f"test-redis-store-{uuid.uuid4().hex}"
    settings.CACHES = {
        **settings.CACHES,
        ALIAS: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": prefix,
        },
    }
    redis_store = RedisStore(ALIAS)
    yield redis_store
    client = redis_store._client
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def _same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal, and equal as JSON too, so an int that came back as a float still fails."""
    assert got == expected
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


# --- the Lua port against the Python model ------------------------------------------------

@st.composite
def step_configs(draw: Any) -> dict[str, Any]:
    """Small thresholds and short times, so that every transition happens often."""
    reset = draw(st.integers(1, 1_000))
    half_open = draw(st.integers(1, 3))
    ratio = st.one_of(st.sampled_from([0, 0.2, 0.5, 0.75, 1.0]), st.floats(0, 1))
    values = {
        "failure_threshold": draw(st.integers(0, 4)),
        "failure_rate_threshold": draw(ratio),
        "minimum_calls": draw(st.integers(0, 6)),
        "window": draw(st.integers(1, 5_000)) / 1000,
        "slow_call_rate_threshold": draw(ratio),
        "reset_timeout": reset / 1000,
        "max_reset_timeout": (reset + draw(st.integers(0, 6_000))) / 1000,
        "half_open_max_calls": half_open,
        "success_threshold": draw(st.integers(1, half_open)),
        "permit_lease": draw(st.integers(1, 1_500)) / 1000,
    }
    return core.Config.from_mapping(values).as_step_config()


rands = st.floats(0, 1, exclude_max=True)
outcomes = st.sampled_from(core.OUTCOMES)


class StepMachine(RuleBasedStateMachine):
    """Every step goes through both the Redis store and ``core.step`` with the same inputs."""

    store: RedisStore

    def __init__(self) -> None:
        super().__init__()
        self.name = f"machine-{uuid.uuid4().hex}"
        self.model = core.new_state()
        self.cfg: dict[str, Any] = {}
        self.now = START
        self.granted: list[tuple[str, int]] = []  # (permit, generation it was granted in)
        self.issued = 0

    def step(self, *, rand: float, entries: Sequence[Sequence[Any]] = (), op: str | None = None,
             arg: dict[str, Any] | None = None) -> dict[str, Any]:
        _, expected = core.step(self.model, self.cfg, self.now, rand, copy.deepcopy(entries),
                                op, copy.deepcopy(arg))
        got = self.store.step(Step(self.name, self.cfg, rand, entries, op, arg, now=self.now))
        _same(got, expected)
        stored = self.store.read(self.name)
        assert stored is not None
        _same(stored, self.model)
        return got

    @initialize(cfg=step_configs())
    def configure(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @rule(ms=st.one_of(st.integers(0, 50), st.integers(0, 3_000)))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule(data=st.data())
    def advance_to_deadline(self, data: Any) -> None:
        """Jump to (or just around) a time where something lapses, to test the boundaries."""
        deadlines = [self.model["until"], *self.model["permits"].values()]
        deadlines = [deadline for deadline in deadlines if deadline > self.now]
        if deadlines:
            self.now = data.draw(st.sampled_from(deadlines)) + data.draw(st.integers(-1, 1))

    @rule(rand=rands)
    def read(self, rand: float) -> None:
        self.step(rand=rand)

    @rule(rand=rands)
    def acquire(self, rand: float) -> None:
        self.issued += 1
        permit = f"p{self.issued}"
        result = self.step(rand=rand, op="acquire", arg={"permit": permit})
        if result["permit"]:
            self.granted.append((permit, result["gen"]))

    @rule(data=st.data(), rand=rands)
    def record(self, data: Any, rand: float) -> None:
        """Outcomes of current, stale and future generations, with or without permits."""
        entries = []
        for _ in range(data.draw(st.integers(1, 4), label="entries")):
            permit, gen = "", self.model["gen"]
            kind = data.draw(st.sampled_from(["current", "stale", "future", "permit"]))
            if kind == "permit" and self.granted:
                permit, gen = data.draw(st.sampled_from(self.granted))
            elif kind == "stale":
                gen -= data.draw(st.integers(1, 2))
            elif kind == "future":
                gen += 1
            if kind != "permit":
                permit = data.draw(st.sampled_from(["", None, "unknown"]))
            entries.append([gen, data.draw(outcomes), data.draw(st.integers(1, 3)), permit])
        self.step(rand=rand, entries=entries)

    @rule(data=st.data(), outcome=outcomes, rand=rands)
    def record_trial(self, data: Any, outcome: str, rand: float) -> None:
        """The outcome of a recently granted half-open trial call."""
        if self.granted:
            permit, gen = data.draw(st.sampled_from(self.granted[-3:]))
            self.step(rand=rand, entries=[[gen, outcome, 1, permit]])

    @rule(data=st.data(), rand=rands)
    def incident(self, data: Any, rand: float) -> None:
        """A whole incident: calls fail until the circuit opens, then trials run when it may."""
        for _ in range(8):
            if self.model["state"] != core.CLOSED:
                break
            outcome = data.draw(st.sampled_from([core.FAILURE, core.SLOW]))
            self.step(rand=rand, entries=[[self.model["gen"], outcome, 1, ""]])
        if self.model["state"] != core.OPEN:
            return
        self.now = self.model["until"] + data.draw(st.integers(-1, 1))
        for _ in range(data.draw(st.integers(1, 4))):
            self.acquire(rand)
            self.now += data.draw(st.integers(0, 20))
        trials = data.draw(st.lists(st.sampled_from(self.granted[-4:]), max_size=4)
                           if self.granted else st.just([]))
        for permit, gen in trials:
            self.step(rand=rand, entries=[[gen, data.draw(outcomes), 1, permit]])
        if self.model["state"] == core.HALF_OPEN and self.model["permits"]:
            # A trial's holder went quiet: ask again just as (or just before) its lease ends.
            self.now = min(self.model["permits"].values()) + data.draw(st.integers(-1, 0))
            self.acquire(rand)

    @rule(
        now=st.booleans(),
        target_state=st.sampled_from((core.CLOSED, *core.FORCEABLE)),
        until=st.one_of(st.just(0), st.integers(-1_000, 5_000)),
        reason=st.sampled_from(["", "maintenance"]),
        actor=st.sampled_from(["", "alice", None, "zoë/ops \"night\""]),
        rand=rands,
    )
    def force(self, now: bool, target_state: str, until: int, reason: str, actor: str | None,
              rand: float) -> None:
        if not now:  # an operator acts rarely; let the breaker run on its own most of the time
            return
        arg = {"state": target_state, "until": self.now + until if until else 0,
               "reason": reason, "actor": actor}
        self.step(rand=rand, op="set", arg=arg)

    @rule(overrides=st.sampled_from([{}, {"failure_threshold": 2}, {"window": 30, "x": "y"},
                                     {"record_exceptions": [], "ignore_exceptions": []}]))
    def hand_out_overrides(self, overrides: dict) -> None:
        self.step(rand=0.5, op="config", arg={"config": json.dumps(overrides)})

    @rule()
    def clear(self) -> None:
        self.store.clear(self.name)
        self.model = core.new_state()
        assert self.store.read(self.name) is None

    def teardown(self) -> None:
        self.store.clear(self.name)


def test_lua_step_matches_core_step(store: RedisStore) -> None:
    StepMachine.store = store
    run_state_machine_as_test(
        StepMachine,
        settings=hypothesis_settings(
            max_examples=60, stateful_step_count=50, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- behaviour ----------------------------------------------------------------------------

class Circuit:
    """Drives one circuit through the store with a clock the test moves."""

    def __init__(self, store: RedisStore, **config: Any) -> None:
        self.store = store
        self.name = f"circuit-{uuid.uuid4().hex}"
        self.cfg = core.Config.from_mapping(config).as_step_config()
        self.now = START
        self.gen = 0

    def step(self, *, rand: float = 0.5, **kwargs: Any) -> dict[str, Any]:
        result = self.store.step(Step(self.name, self.cfg, rand, now=self.now, **kwargs))
        self.gen = result["gen"]
        return result

    def record(self, *outcomes: str, permit: str = "", gen: int | None = None,
               rand: float = 0.5) -> dict[str, Any]:
        """One step carrying one entry per outcome, as a worker flushes its pending results."""
        gen = self.gen if gen is None else gen
        return self.step(entries=[[gen, outcome, 1, permit] for outcome in outcomes], rand=rand)

    def each(self, *outcomes: str) -> dict[str, Any]:
        """One step per outcome; the last step's result."""
        result: dict[str, Any] = {}
        for outcome in outcomes:
            result = self.record(outcome)
        return result

    def acquire(self, permit: str) -> dict[str, Any]:
        return self.step(op="acquire", arg={"permit": permit})

    def set(self, state: str, **arg: Any) -> dict[str, Any]:
        return self.step(op="set", arg={"state": state, **arg})

    def state(self) -> dict[str, Any]:
        stored = self.store.read(self.name)
        assert stored is not None
        return stored


S, SLOW, F = core.SUCCESS, core.SLOW, core.FAILURE


def test_consecutive_failures_trip(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=3, minimum_calls=100, reset_timeout=30)
    assert circuit.each(F, F, S, F, F)["state"] == "closed"  # the success broke the run
    result = circuit.record(F)
    assert result["state"] == "open"
    assert result["transitions"] == [{"from": "closed", "to": "open", "gen": 1,
                                      "reason": "consecutive_failures", "at": START,
                                      "actor": ""}]
    assert result["opened_at"] == START
    assert result["until"] == START + 30_000  # rand 0.5: no jitter
    assert (result["calls"], result["failures"]) == (6, 5)
    assert circuit.acquire("p")["allowed"] is False


def test_failure_rate_trips_only_after_minimum_calls(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=0, failure_rate_threshold=0.5, minimum_calls=4)
    result = circuit.each(F, F, F)
    assert (result["state"], result["calls"], result["failures"]) == ("closed", 3, 3)
    result = circuit.record(S)
    assert result["state"] == "open"
    assert result["transitions"][0]["reason"] == "failure_rate"


def test_failure_rate_below_threshold_stays_closed(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=0, failure_rate_threshold=0.5, minimum_calls=4)
    result = circuit.each(S, S, S, F, S, F)
    assert (result["state"], result["calls"], result["failures"]) == ("closed", 6, 2)


def test_window_forgets_old_calls(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=0, failure_rate_threshold=0.5, minimum_calls=4,
                      window=10)
    circuit.each(F, F, F)
    circuit.now += 10_000
    result = circuit.each(S, S, S, F)
    assert (result["state"], result["calls"], result["failures"]) == ("closed", 4, 1)


def test_slow_calls_trip(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=0, failure_rate_threshold=0,
                      slow_call_rate_threshold=0.5, minimum_calls=4)
    result = circuit.each(SLOW, S, SLOW)
    assert (result["state"], result["slow"]) == ("closed", 2)
    result = circuit.record(S)
    assert result["state"] == "open"
    assert result["transitions"][0]["reason"] == "slow_calls"
    assert (result["calls"], result["failures"], result["slow"]) == (4, 0, 2)


def test_stale_generation_entries_are_ignored(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=3, minimum_calls=100)
    # Five workers' failures in one flush: counting stops at the trip.
    result = circuit.record(F, F, F, F, F)
    assert (result["state"], result["gen"]) == ("open", 1)
    assert (result["counted"], result["failures"]) == (3, 3)
    assert len(result["transitions"]) == 1
    # Late failures from the closed generation change nothing.
    late = circuit.record(F, F, gen=0)
    assert (late["counted"], late["failures"], late["gen"], late["transitions"]) == (0, 3, 1, [])
    assert circuit.state()["opens"] == 1


def test_half_open_permits_are_limited_and_reclaimed(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=1, reset_timeout=1, half_open_max_calls=2,
                      success_threshold=2, permit_lease=5)
    opened = circuit.record(F)
    early = circuit.acquire("early")
    assert (early["allowed"], early["permit"], early["retry_after"]) == (False, "", 1_000)
    circuit.now = opened["until"]
    first = circuit.acquire("a")
    assert (first["allowed"], first["permit"], first["state"]) == (True, "a", "half_open")
    assert first["transitions"][0]["reason"] == "reset_timeout"
    circuit.now += 2_000
    assert circuit.acquire("b")["allowed"] is True
    refused = circuit.acquire("c")
    assert (refused["allowed"], refused["permit"], refused["retry_after"]) == (False, "", 3_000)
    circuit.now += 3_000  # a's lease has run out; its holder is presumed dead
    assert circuit.acquire("c")["permit"] == "c"
    assert circuit.acquire("d")["allowed"] is False
    assert set(circuit.state()["permits"]) == {"b", "c"}
    # A result under the reclaimed permit is not a trial result.
    late = circuit.record(S, permit="a")
    assert (late["state"], circuit.state()["hs"]) == ("half_open", 0)


def test_success_threshold_closes(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=1, reset_timeout=1, half_open_max_calls=2,
                      success_threshold=2)
    circuit.now = circuit.record(F)["until"]
    circuit.acquire("a")
    circuit.acquire("b")
    assert circuit.record(S, permit="a")["state"] == "half_open"
    result = circuit.record(S, permit="b")
    assert result["state"] == "closed"
    assert result["transitions"] == [{"from": "half_open", "to": "closed", "gen": 3,
                                      "reason": "trial_succeeded", "at": circuit.now,
                                      "actor": ""}]
    assert (result["calls"], result["failures"]) == (0, 0)
    assert circuit.acquire("anyone")["allowed"] is True


def test_backoff_doubles_up_to_max_reset_timeout(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=1, reset_timeout=1, max_reset_timeout=3)
    result = circuit.record(F)
    first_opened = result["opened_at"]
    durations = [result["until"] - circuit.now]
    for attempt in range(3):
        circuit.now = result["until"]
        circuit.acquire(f"trial-{attempt}")
        result = circuit.record(F, permit=f"trial-{attempt}", rand=0.999)
        assert result["transitions"][0]["reason"] == "trial_failed"
        durations.append(result["until"] - circuit.now)
    assert durations == [1_000, 2_199, 3_000, 3_000]  # jitter up to +10%, never past the cap
    assert result["opened_at"] == first_opened  # still the same incident
    # Closing forgets the backoff.
    circuit.now = result["until"]
    circuit.acquire("last")
    circuit.record(S, permit="last")
    assert circuit.record(F)["until"] - circuit.now == 1_000


def test_forced_open_lapses_back_to_closed(store: RedisStore) -> None:
    circuit = Circuit(store)
    forced = circuit.set("forced_open", until=START + 1_000, reason="maintenance", actor="alice")
    assert forced["transitions"] == [{"from": "closed", "to": "forced_open", "gen": 1,
                                      "reason": "maintenance", "at": START, "actor": "alice"}]
    assert (forced["until"], forced["opened_at"]) == (START + 1_000, START)
    refused = circuit.acquire("p")
    assert (refused["allowed"], refused["retry_after"]) == (False, 1_000)
    circuit.now += 1_000
    lapsed = circuit.step()
    assert lapsed["state"] == "closed"
    assert lapsed["transitions"][0]["reason"] == "forced_state_expired"
    assert circuit.state()["actor"] == ""


def test_forced_closed_counts_but_never_trips_until_it_lapses(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=1)
    circuit.set("forced_closed", until=START + 1_000)
    result = circuit.each(F, F, F)
    assert (result["state"], result["failures"]) == ("forced_closed", 3)
    assert circuit.acquire("p")["allowed"] is True
    circuit.now += 1_000
    lapsed = circuit.step()
    assert (lapsed["state"], lapsed["failures"]) == ("closed", 0)


def test_forced_state_without_until_stays(store: RedisStore) -> None:
    circuit = Circuit(store)
    circuit.set("disabled", reason="", actor="ops")
    circuit.now += 86_400_000
    result = circuit.acquire("p")
    assert (result["state"], result["allowed"], result["until"]) == ("disabled", True, 0)
    assert circuit.state()["reason"] == "forced"


def test_reset_closes_and_forgets(store: RedisStore) -> None:
    circuit = Circuit(store, failure_threshold=2)
    circuit.record(F, F)
    result = circuit.set("closed", actor="bob")
    assert result["state"] == "closed"
    assert result["transitions"] == [{"from": "open", "to": "closed", "gen": 2,
                                      "reason": "reset", "at": START, "actor": "bob"}]
    state = circuit.state()
    assert (state["buckets"], state["permits"], state["opens"], state["consec"]) == ({}, {}, 0, 0)
    assert (state["actor"], state["until"]) == ("bob", 0)


def test_state_key_expires_and_clear_deletes_it(store: RedisStore) -> None:
    circuit = Circuit(store)
    circuit.step()
    key = store._cache.make_key(f"resilience:circuit:{circuit.name}")
    assert store._client.exists(key) == 1
    assert STATE_TTL_MS - 60_000 < store._client.pttl(key) <= STATE_TTL_MS
    assert circuit.state() == core.new_state()
    store.clear(circuit.name)
    assert store.read(circuit.name) is None
    assert store._client.exists(key) == 0


def test_time_comes_from_the_redis_server(store: RedisStore) -> None:
    cfg = core.Config(failure_threshold=1, reset_timeout=30).as_step_config()
    name = f"clock-{uuid.uuid4().hex}"
    before = int(time.time() * 1000)
    result = store.step(Step(name, cfg, 0.5, [[0, F, 1, ""]]))
    after = int(time.time() * 1000)
    assert isinstance(result["now"], int)
    assert before - 1_000 <= result["now"] <= after + 1_000  # Redis runs on this host
    assert result["until"] == result["now"] + 30_000
    assert result["transitions"][0]["at"] == result["now"]


# --- Redis down ---------------------------------------------------------------------------

@pytest.fixture
def down_store(settings: Any) -> RedisStore:
    settings.CACHES = {
        **settings.CACHES,
        DOWN_ALIAS: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    return RedisStore(DOWN_ALIAS)


def test_unreachable_redis_raises_store_unavailable_quickly(down_store: RedisStore) -> None:
    cfg = core.Config().as_step_config()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        down_store.step(Step("crm.read", cfg, 0.5, op="acquire", arg={"permit": "p"}))
    assert time.monotonic() - started < 1.0
    assert caught.value.code == "STORE_UNAVAILABLE"
    assert caught.value.circuit == "crm.read"
    assert isinstance(caught.value.__cause__, redis_exceptions.ConnectionError | OSError)
    with pytest.raises(StoreUnavailable):
        down_store.read("crm.read")
    with pytest.raises(StoreUnavailable):
        down_store.clear("crm.read")
