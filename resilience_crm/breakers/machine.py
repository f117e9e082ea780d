"""The breaker's state machine: plain Python, no Django, no I/O, clock and randomness injected.

A circuit's whole state is one JSON-able dict (see :func:`new_state`). A store applies one
:func:`step` to it atomically: the Redis store runs ``stores/step.lua``, a line-for-line port
of this module, the database store runs this function inside a compare-and-set, the memory
store under a lock. Times are integer milliseconds so that both ports compute the same
numbers.

A step first applies the caller's pending outcomes (``entries``), then an operation:
``"acquire"`` asks for a call permit, ``"set"`` forces a state or resets, ``"config"`` hands
operators' overrides to every worker, ``None`` only reads.
Every transition bumps the generation by one and is reported in the step's result, so the
one caller whose step made it is the one that announces it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
FORCED_OPEN = "forced_open"
FORCED_CLOSED = "forced_closed"
DISABLED = "disabled"
METRICS_ONLY = "metrics_only"
STATES = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED, DISABLED, METRICS_ONLY)
#: States an operator may set with ``force``; ``closed`` is what ``reset`` sets.
FORCEABLE = (FORCED_OPEN, FORCED_CLOSED, DISABLED, METRICS_ONLY)
#: States in which every call is let through without asking the store.
PASSING = (CLOSED, FORCED_CLOSED, DISABLED, METRICS_ONLY)
#: States that count outcomes into the window.
COUNTING = (CLOSED, FORCED_CLOSED, METRICS_ONLY)
#: States in which calls are rejected without running.
REJECTING = (OPEN, FORCED_OPEN)
#: States of an incident under way: tripped, or trying its way back (a reset ends it).
IN_INCIDENT = (OPEN, HALF_OPEN)
#: States in which the dependency is not known to be well: rejecting, or on trial.
STRUGGLING = (OPEN, HALF_OPEN, FORCED_OPEN)

SUCCESS = "success"
SLOW = "slow"  # a success that took longer than slow_call_duration
FAILURE = "failure"
OUTCOMES = (SUCCESS, SLOW, FAILURE)

BUCKETS = 10  # the failure-rate window is kept as this many buckets
MAX_BACKOFF_DOUBLINGS = 30


@dataclass(frozen=True)
class Config:
    """One circuit's breaker settings, in the units users write (seconds, ratios)."""

    failure_threshold: int = 5
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 20
    window: float = 60
    slow_call_duration: float = 5.0
    slow_call_rate_threshold: float = 1.0
    reset_timeout: float = 30
    max_reset_timeout: float = 600
    half_open_max_calls: int = 1
    success_threshold: int = 1
    call_timeout: float = 10.0
    permit_lease: float = 30
    record_exceptions: tuple[str, ...] = ()
    ignore_exceptions: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Config:
        errors = config_errors(values)
        if errors:
            key, message = errors[0]
            raise ValueError(f"{key}: {message}")
        known = {f.name for f in fields(cls)}
        cleaned = {k: v for k, v in values.items() if k in known}
        for key in ("record_exceptions", "ignore_exceptions"):
            if key in cleaned:
                cleaned[key] = tuple(cleaned[key])
        return cls(**cleaned)

    def as_step_config(self) -> dict[str, Any]:
        """The numbers a store step needs, times in integer milliseconds."""
        return {
            "failure_threshold": int(self.failure_threshold),
            "failure_rate_threshold": float(self.failure_rate_threshold),
            "minimum_calls": int(self.minimum_calls),
            "window_ms": _ms(self.window),
            "slow_call_rate_threshold": float(self.slow_call_rate_threshold),
            "reset_ms": _ms(self.reset_timeout),
            "max_reset_ms": _ms(self.max_reset_timeout),
            "half_open_max_calls": int(self.half_open_max_calls),
            "success_threshold": int(self.success_threshold),
            "permit_lease_ms": _ms(self.permit_lease),
        }


def _ms(seconds: float) -> int:
    return int(round(float(seconds) * 1000))


_INT_KEYS = {"failure_threshold", "minimum_calls", "half_open_max_calls", "success_threshold"}
_RATIO_KEYS = {"failure_rate_threshold", "slow_call_rate_threshold"}
_SECONDS_KEYS = {
    "window", "slow_call_duration", "reset_timeout", "max_reset_timeout", "call_timeout",
    "permit_lease",
}
_POSITIVE_KEYS = {"window", "reset_timeout", "max_reset_timeout", "permit_lease",
                  "half_open_max_calls", "success_threshold", "slow_call_duration"}
_LIST_KEYS = {"record_exceptions", "ignore_exceptions"}


def config_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with a breaker settings mapping, as ``(key, message)`` pairs."""
    errors: list[tuple[str, str]] = []
    known = _INT_KEYS | _RATIO_KEYS | _SECONDS_KEYS | _LIST_KEYS
    for key, value in values.items():
        if key not in known:
            errors.append((key, "is not a breaker setting"))
        elif key in _LIST_KEYS:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                errors.append((key, "must be a list of dotted paths to exception classes"))
        elif isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            errors.append((key, f"must be a number, not {value!r}"))
        elif key in _INT_KEYS and int(value) != value:
            errors.append((key, f"must be a whole number, not {value!r}"))
        elif key in _RATIO_KEYS and not 0 <= value <= 1:
            errors.append((key, f"must be between 0 and 1, not {value!r}"))
        elif value < 0 or (key in _POSITIVE_KEYS and value == 0):
            errors.append((key, f"must be {'above' if key in _POSITIVE_KEYS else 'at least'} 0,"
                                f" not {value!r}"))
    if not errors:
        merged: dict[str, Any] = {f.name: f.default for f in fields(Config)} | dict(values)
        if merged["max_reset_timeout"] < merged["reset_timeout"]:
            errors.append(("max_reset_timeout", "must be at least reset_timeout"))
        if merged["success_threshold"] > merged["half_open_max_calls"]:
            errors.append(("success_threshold", "must not exceed half_open_max_calls"))
    return errors


def new_state() -> dict[str, Any]:
    """A closed circuit that has seen nothing."""
    return {
        "state": CLOSED,
        "gen": 0,
        "opened_at": 0,  # ms; when the current or last incident opened
        "until": 0,  # ms; when open ends, or when a forced state lapses (0: never)
        "opens": 0,  # opens since the circuit was last closed, for backoff
        "consec": 0,  # consecutive failures while counting
        "hs": 0,  # successful trial calls in this half-open generation
        "permits": {},  # half-open permit id -> lease expiry (ms)
        "buckets": {},  # slot -> [bucket index, calls, failures, slow]
        "reason": "",
        "actor": "",
        "cv": 0,  # bumped each time an operator saves the circuit's overrides
        # Those overrides as JSON text, so every worker picks them up with its next step. Text,
        # not a table: Redis's cjson would turn an empty list in them into an object.
        "cfg": "",
    }


def step(
    st: dict[str, Any],
    cfg: Mapping[str, Any],
    now: int,
    rand: float,
    entries: Iterable[Iterable[Any]] = (),
    op: str | None = None,
    arg: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``entries`` then ``op`` to ``st`` (mutated and returned) at time ``now`` (ms).

    ``entries``: ``[generation, outcome, count, permit_id]`` lists, applied in order; one whose
    generation is not the current one is stale and ignored, so a burst of failures from many
    workers counts exactly up to the trip and no further.
    ``op``: ``"acquire"`` (``arg["permit"]``: the id a half-open permit is leased under),
    ``"set"`` (``arg``: ``state``, ``until`` ms or 0, ``reason``, ``actor``), ``"config"``
    (``arg["config"]``: the circuit's overrides as JSON text, handed to every worker) or
    ``None``.
    ``rand``: a number in [0, 1) for the backoff jitter.
    """
    arg = arg or {}
    transitions: list[dict[str, Any]] = []
    counted = 0
    for gen, outcome, count, permit in entries:
        if gen != st["gen"]:
            continue
        counted += count
        if st["state"] in COUNTING:
            _count(st, cfg, now, outcome, count)
            if st["state"] == CLOSED:
                reason = _trip_reason(st, cfg, now)
                if reason:
                    transitions.append(_open(st, cfg, now, rand, reason))
        elif st["state"] == HALF_OPEN and permit and permit in st["permits"]:
            del st["permits"][permit]
            if outcome == FAILURE:
                transitions.append(_open(st, cfg, now, rand, "trial_failed"))
            else:
                st["hs"] += 1
                if st["hs"] >= cfg["success_threshold"]:
                    transitions.append(_close(st, now, "trial_succeeded"))

    result: dict[str, Any] = {"allowed": False, "permit": "", "retry_after": 0}
    if st["state"] != CLOSED and st["until"] > 0 and now >= st["until"]:
        if st["state"] == OPEN:
            transitions.append(_transition(st, HALF_OPEN, now, "reset_timeout"))
            st["hs"] = 0
            st["permits"] = {}
        elif st["state"] in FORCEABLE:
            transitions.append(_close(st, now, "forced_state_expired"))

    if op == "acquire":
        state = st["state"]
        if state in PASSING:
            result["allowed"] = True
        elif state == HALF_OPEN:
            permits = st["permits"]
            for pid in [p for p, expiry in permits.items() if expiry <= now]:
                del permits[pid]
            if st["hs"] + len(permits) < cfg["half_open_max_calls"]:
                permits[arg["permit"]] = now + cfg["permit_lease_ms"]
                result["allowed"] = True
                result["permit"] = arg["permit"]
            else:
                result["retry_after"] = min(permits.values()) - now if permits else 0
        elif st["until"] > 0:
            result["retry_after"] = st["until"] - now
    elif op == "set":
        target = arg["state"]
        if target == CLOSED:
            transitions.append(_close(st, now, arg.get("reason") or "reset"))
        else:
            transitions.append(_transition(st, target, now, arg.get("reason") or "forced"))
            st["until"] = int(arg.get("until") or 0)
            if target == FORCED_OPEN:
                st["opened_at"] = now
        st["actor"] = arg.get("actor") or ""
        transitions[-1]["actor"] = st["actor"]
    elif op == "config":
        st["cfg"] = str(arg["config"])
        st["cv"] = st.get("cv", 0) + 1

    calls, failures, slow = _totals(st, cfg, now)
    result.update(
        state=st["state"], gen=st["gen"], until=st["until"], opened_at=st["opened_at"], now=now,
        calls=calls, failures=failures, slow=slow, counted=counted, transitions=transitions,
        cv=st.get("cv", 0), cfg=st.get("cfg", ""),
    )
    return st, result


def current_state(st: Mapping[str, Any], now: int) -> str:
    """The state ``st`` is in at ``now``, without stepping it: an open circuit whose timeout
    has passed reads as half-open, a forced state that has lapsed as closed."""
    state = str(st["state"])
    if state != CLOSED and st["until"] > 0 and now >= st["until"]:
        if state == OPEN:
            return HALF_OPEN
        if state in FORCEABLE:
            return CLOSED
    return state


def _count(st: dict[str, Any], cfg: Mapping[str, Any], now: int, outcome: str, count: int) -> None:
    width = max(1, cfg["window_ms"] // BUCKETS)
    index = now // width
    slot = str(index % BUCKETS)
    bucket = st["buckets"].get(slot)
    if bucket is None or bucket[0] != index:
        bucket = [index, 0, 0, 0]
        st["buckets"][slot] = bucket
    bucket[1] += count
    if outcome == FAILURE:
        bucket[2] += count
        st["consec"] += count
    else:
        st["consec"] = 0
        if outcome == SLOW:
            bucket[3] += count


def _totals(st: dict[str, Any], cfg: Mapping[str, Any], now: int) -> tuple[int, int, int]:
    width = max(1, cfg["window_ms"] // BUCKETS)
    oldest = now // width - BUCKETS
    calls = failures = slow = 0
    for bucket in st["buckets"].values():
        if bucket[0] > oldest:
            calls += bucket[1]
            failures += bucket[2]
            slow += bucket[3]
    return calls, failures, slow


def _trip_reason(st: dict[str, Any], cfg: Mapping[str, Any], now: int) -> str:
    if cfg["failure_threshold"] > 0 and st["consec"] >= cfg["failure_threshold"]:
        return "consecutive_failures"
    calls, failures, slow = _totals(st, cfg, now)
    if calls > 0 and calls >= cfg["minimum_calls"]:
        if cfg["failure_rate_threshold"] > 0 and failures / calls >= cfg["failure_rate_threshold"]:
            return "failure_rate"
        if cfg["slow_call_rate_threshold"] > 0 and slow / calls >= cfg["slow_call_rate_threshold"]:
            return "slow_calls"
    return ""


def _transition(st: dict[str, Any], to: str, now: int, reason: str) -> dict[str, Any]:
    change = {"from": st["state"], "to": to, "gen": st["gen"] + 1, "reason": reason, "at": now,
              "actor": ""}
    st["state"] = to
    st["gen"] += 1
    st["reason"] = reason
    st["actor"] = ""
    st["until"] = 0
    return change


def _open(st: dict[str, Any], cfg: Mapping[str, Any], now: int, rand: float,
          reason: str) -> dict[str, Any]:
    change = _transition(st, OPEN, now, reason)
    st["opens"] += 1
    if change["from"] != HALF_OPEN:
        st["opened_at"] = now
    doublings = min(st["opens"] - 1, MAX_BACKOFF_DOUBLINGS)
    base = min(cfg["reset_ms"] * 2**doublings, cfg["max_reset_ms"])
    duration = min(math.floor(base * (0.9 + 0.2 * rand)), cfg["max_reset_ms"])
    st["until"] = now + max(1, duration)
    st["permits"] = {}
    st["hs"] = 0
    return change


def _close(st: dict[str, Any], now: int, reason: str) -> dict[str, Any]:
    change = _transition(st, CLOSED, now, reason)
    st["opens"] = 0
    st["consec"] = 0
    st["hs"] = 0
    st["permits"] = {}
    st["buckets"] = {}
    return change
