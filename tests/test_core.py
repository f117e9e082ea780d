"""The pure state machine, driven directly with an explicit clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_crm.breakers import machine as core


def make(**overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    base = {"minimum_calls": 4, "window": 10, "reset_timeout": 1, "max_reset_timeout": 8}
    return core.new_state(), core.Config.from_mapping(base | overrides).as_step_config()


def fail(state, cfg, now, gen=None, count=1, rand=0.5):
    gen = state["gen"] if gen is None else gen
    return core.step(state, cfg, now, rand, [[gen, core.FAILURE, count, ""]])[1]


def succeed(state, cfg, now, count=1, outcome=core.SUCCESS):
    return core.step(state, cfg, now, 0.5, [[state["gen"], outcome, count, ""]])[1]


def acquire(state, cfg, now, permit="p"):
    return core.step(state, cfg, now, 0.5, op="acquire", arg={"permit": permit})[1]


def test_consecutive_failures_trip_once():
    state, cfg = make(failure_threshold=3, failure_rate_threshold=0)
    assert fail(state, cfg, 1000)["state"] == core.CLOSED
    assert fail(state, cfg, 1001)["state"] == core.CLOSED
    result = fail(state, cfg, 1002)
    assert result["state"] == core.OPEN
    assert result["transitions"] == [
        {"from": "closed", "to": "open", "gen": 1, "reason": "consecutive_failures",
         "at": 1002, "actor": ""}
    ]
    assert result["until"] == 1002 + 1000


def test_a_success_breaks_the_run_of_failures():
    state, cfg = make(failure_threshold=2, failure_rate_threshold=0)
    fail(state, cfg, 1000)
    succeed(state, cfg, 1001)
    assert fail(state, cfg, 1002)["state"] == core.CLOSED


def test_stale_outcomes_do_not_overshoot():
    state, cfg = make(failure_threshold=3, failure_rate_threshold=0)
    entries = [[0, core.FAILURE, 1, ""]] * 10
    state, result = core.step(state, cfg, 1000, 0.5, entries)
    assert result["counted"] == 3
    assert result["failures"] == 3
    assert len(result["transitions"]) == 1


def test_failure_rate_needs_minimum_calls():
    state, cfg = make(failure_threshold=0, failure_rate_threshold=0.6, minimum_calls=4)
    fail(state, cfg, 1000)
    fail(state, cfg, 1000)
    assert state["state"] == core.CLOSED  # 2 of 2 failed, but fewer than minimum_calls
    succeed(state, cfg, 1000)
    result = succeed(state, cfg, 1000)
    assert result["state"] == core.CLOSED  # 2 of 4 failed: under 60%
    assert fail(state, cfg, 1000)["transitions"][0]["reason"] == "failure_rate"  # 3 of 5


def test_failure_rate_window_forgets_old_calls():
    state, cfg = make(failure_threshold=0, failure_rate_threshold=0.5, minimum_calls=4, window=10)
    for _ in range(3):
        fail(state, cfg, 1000)
    # Eleven seconds later the three failures are out of the window.
    result = fail(state, cfg, 12_000)
    assert (result["calls"], result["failures"], result["state"]) == (1, 1, core.CLOSED)


def test_slow_calls_trip():
    state, cfg = make(failure_threshold=0, failure_rate_threshold=0,
                      slow_call_rate_threshold=0.75, minimum_calls=4)
    for _ in range(3):
        succeed(state, cfg, 1000, outcome=core.SLOW)
    result = succeed(state, cfg, 1000)
    assert result["transitions"][0]["reason"] == "slow_calls"


def test_half_open_admits_exactly_max_calls_and_reclaims_expired_leases():
    state, cfg = make(failure_threshold=1, half_open_max_calls=2, success_threshold=2,
                      permit_lease=5)
    fail(state, cfg, 0)
    assert acquire(state, cfg, 500)["allowed"] is False  # still open
    first = acquire(state, cfg, 1000, "a")
    assert first["transitions"][0]["to"] == core.HALF_OPEN
    assert first["allowed"] and first["permit"] == "a"
    assert acquire(state, cfg, 1001, "b")["allowed"]
    refused = acquire(state, cfg, 1002, "c")
    assert not refused["allowed"]
    assert refused["retry_after"] == 5000 - 2
    # The holder of "a" dies; its lease runs out and the slot is free again.
    assert acquire(state, cfg, 6000, "d")["allowed"]
    gen = state["gen"]
    core.step(state, cfg, 6001, 0.5, [[gen, core.SUCCESS, 1, "b"]])
    result = core.step(state, cfg, 6002, 0.5, [[gen, core.SUCCESS, 1, "d"]])[1]
    assert result["transitions"][0]["to"] == core.CLOSED
    # The late holder of "a" reports: stale, ignored.
    assert core.step(state, cfg, 6003, 0.5, [[gen, core.FAILURE, 1, "a"]])[1]["counted"] == 0


def test_failed_trial_reopens_with_backoff_up_to_the_cap():
    state, cfg = make(failure_threshold=1, reset_timeout=1, max_reset_timeout=3)
    now = 0
    fail(state, cfg, now)
    durations = []
    for _ in range(4):
        now = state["until"]
        permit = acquire(state, cfg, now, f"p{now}")["permit"]
        result = core.step(state, cfg, now, 0.5, [[state["gen"], core.FAILURE, 1, permit]])[1]
        assert result["transitions"][0]["from"] == core.HALF_OPEN
        durations.append(result["until"] - now)
    assert durations == [2000, 3000, 3000, 3000]
    assert state["opened_at"] == 0  # still the same incident


def test_backoff_jitter_stays_within_ten_percent():
    state, cfg = make(failure_threshold=1, reset_timeout=10, max_reset_timeout=100)
    low = fail(state, cfg, 0, rand=0.0)["until"]
    state, cfg = make(failure_threshold=1, reset_timeout=10, max_reset_timeout=100)
    high = fail(state, cfg, 0, rand=0.999)["until"]
    assert (low, high) == (9000, 10_998)


def test_forced_states_and_expiry():
    state, cfg = make(failure_threshold=1)
    set_op = {"state": core.FORCED_OPEN, "until": 5000, "reason": "maintenance", "actor": "ann"}
    result = core.step(state, cfg, 1000, 0.5, op="set", arg=set_op)[1]
    assert result["transitions"][0]["actor"] == "ann"
    assert not acquire(state, cfg, 2000)["allowed"]
    result = acquire(state, cfg, 5000)
    assert result["allowed"]
    assert result["transitions"][0] == {"from": core.FORCED_OPEN, "to": core.CLOSED, "gen": 2,
                                        "reason": "forced_state_expired", "at": 5000, "actor": ""}


@pytest.mark.parametrize("forced", [core.FORCED_CLOSED, core.METRICS_ONLY, core.DISABLED])
def test_passing_states_never_trip(forced):
    state, cfg = make(failure_threshold=1)
    core.step(state, cfg, 0, 0.5, op="set", arg={"state": forced})
    for now in range(10):
        assert acquire(state, cfg, now)["allowed"]
        fail(state, cfg, now)
    assert state["state"] == forced


def test_reset_closes_and_forgets():
    state, cfg = make(failure_threshold=1)
    fail(state, cfg, 0)
    result = core.step(state, cfg, 1, 0.5, op="set", arg={"state": core.CLOSED})[1]
    assert result["transitions"][0]["reason"] == "reset"
    assert (result["state"], result["calls"], state["opens"]) == (core.CLOSED, 0, 0)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"failure_threshold": -1}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"window": 0}, "window"),
        ({"reset_timeout": "30"}, "reset_timeout"),
        ({"reset_timeout": 60, "max_reset_timeout": 30}, "max_reset_timeout"),
        ({"success_threshold": 3, "half_open_max_calls": 2}, "success_threshold"),
        ({"colour": "red"}, "colour"),
        ({"record_exceptions": "ValueError"}, "record_exceptions"),
    ],
)
def test_config_errors_name_the_key(values, key):
    errors = core.config_errors(values)
    assert [k for k, _ in errors] == [key]
    with pytest.raises(ValueError, match=key):
        core.Config.from_mapping(values)


# Properties over arbitrary sequences of steps.

steps = st.lists(
    st.tuples(
        st.integers(0, 3_000),  # time advance, ms
        st.sampled_from(["fail", "succeed", "slow", "acquire", "trial_ok", "trial_fail",
                         "stale", "force", "reset"]),
        st.floats(0, 0.999),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 4), st.integers(1, 3))
def test_invariants_hold_for_any_sequence(ops, threshold, max_calls):
    state, cfg = make(failure_threshold=threshold, half_open_max_calls=max_calls,
                      success_threshold=1, minimum_calls=3, permit_lease=2)
    now, permits = 10_000, []
    for advance, action, rand in ops:
        now += advance
        gen_before, state_before = state["gen"], state["state"]
        entries, op, arg = [], None, None
        if action in ("fail", "succeed", "slow"):
            outcome = {"fail": core.FAILURE, "succeed": core.SUCCESS, "slow": core.SLOW}[action]
            entries = [[state["gen"], outcome, 1, ""]]
        elif action == "stale":
            entries = [[state["gen"] - 1, core.FAILURE, 5, ""]]
        elif action in ("trial_ok", "trial_fail") and permits:
            outcome = core.SUCCESS if action == "trial_ok" else core.FAILURE
            entries = [[state["gen"], outcome, 1, permits.pop()]]
        elif action == "acquire":
            op, arg = "acquire", {"permit": f"p{now}-{len(permits)}"}
        elif action == "force":
            op, arg = "set", {"state": core.FORCED_OPEN, "until": now + 500}
        elif action == "reset":
            op, arg = "set", {"state": core.CLOSED}
        consec_before = state["consec"]
        state, result = core.step(state, cfg, now, rand, entries, op, arg)
        if result["permit"]:
            permits.append(result["permit"])

        # Every transition bumps the generation by exactly one and chains from the last state.
        changes = result["transitions"]
        assert state["gen"] == gen_before + len(changes)
        assert [c["gen"] for c in changes] == list(range(gen_before + 1, state["gen"] + 1))
        expected_from = state_before
        for change in changes:
            assert change["from"] == expected_from
            assert change["from"] != change["to"] or op == "set"
            expected_from = change["to"]
        assert state["state"] == expected_from
        # Stale outcomes are never counted.
        if action == "stale":
            assert result["counted"] == 0
        # The consecutive count never passes the threshold.
        assert state["consec"] <= max(threshold, consec_before)
        # Half-open never has more live trials than it may.
        if state["state"] == core.HALF_OPEN:
            live = [p for p, expiry in state["permits"].items() if expiry > now]
            assert state["hs"] + len(live) <= max_calls
        # An open circuit always knows when it will try again, within the cap.
        if state["state"] == core.OPEN:
            assert 0 < state["until"] - now <= cfg["max_reset_ms"] or state["until"] <= now
