"""Counters kept by this worker process: calls by outcome, rejections, latency, transitions,
store errors.

Exact and cheap enough for the hot path: each thread counts into its own dictionary (no
lock, no lost increments between threads), under the minute of the call. The status
command, the readiness endpoint and the metrics exposition read the totals with
:func:`collect` / :func:`value`. :mod:`resilience_crm.buckets` writes the counts into the
per-minute ``CircuitMetric`` rows (:func:`unwritten`, :func:`mark_written`), and
:func:`retire` folds written minutes into the totals. A forked child starts with empty
counters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from resilience_crm import flusher

logger = logging.getLogger("resilience_crm.metrics")

#: ``CircuitMetric`` column for each outcome counted under ``calls``.
COLUMNS = {"success": "successes", "slow": "slow", "failure": "failures",
           "timeout": "timeouts", "rejected": "rejected", "fallback": "fallbacks"}
#: Minutes of counts one thread keeps while the database is down; older ones are dropped
#: unwritten (with an error, counted as ``metric_minutes_dropped``).
MAX_MINUTES = 24 * 60
#: The counter (and column) of the slowest call of a minute: kept as the maximum, not added.
PEAK = "latency_max"

#: The wall clock that decides a call's minute (tests put their own clock here).
clock: Callable[[], float] = time.time


class Key:
    """A counter: one object per name and labels (see :func:`key`), hashed by identity."""

    __slots__ = ("name", "labels", "circuit", "column", "peak")

    def __init__(self, name: str, labels: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self.labels = labels
        found = dict(labels)
        self.circuit: str | None = found.get("circuit")
        self.column: str | None = None
        if self.circuit is not None:
            if name == "calls" and found.get("outcome") in COLUMNS:
                self.column = COLUMNS[found["outcome"]]
            elif name in ("latency_us", PEAK):
                self.column = name
        self.peak: Key | None = None

    def __repr__(self) -> str:
        return f"<metrics.Key {self.name} {dict(self.labels)}>"


class _Shard:
    """One thread's counts. Only its thread adds to them; the flusher reads copies."""

    __slots__ = ("start", "end", "counts", "minutes", "written", "thread")

    def __init__(self) -> None:
        self.start = self.end = 0.0  # the current minute, as clock() times
        self.counts: defaultdict[Key, Any] = defaultdict(int)
        self.minutes: dict[float, defaultdict[Key, Any]] = {}  # minute (epoch // 60) -> counts
        self.written: dict[float, dict[Key, Any]] = {}  # what was written of each
        self.thread = threading.current_thread()


_keys: dict[tuple[Any, ...], Key] = {}
_local = threading.local()
_shards: list[_Shard] = []
_retired: dict[Key, int] = {}  # totals of minutes written and forgotten
_state_lock = threading.Lock()  # shards, written and retired; never held across I/O


def key(name: str, **labels: str) -> Key:
    """The counter for ``name`` and ``labels``; hot paths build it once and pass it to
    :func:`add`."""
    identity = (name, *sorted(labels.items()))
    found = _keys.get(identity)
    if found is None:
        found = _keys.setdefault(identity, Key(name, tuple(sorted(labels.items()))))
        if name == "latency_us" and found.peak is None:
            found.peak = key(PEAK, **labels)
    return found


def _shard() -> _Shard:
    """This thread's shard, turned to the current minute."""
    try:
        shard = _local.shard
    except AttributeError:
        shard = _new_shard()
    now = clock()
    if now >= shard.end or now < shard.start:
        _turn(shard, now)
    return shard


def add(counter: Key, amount: int = 1) -> None:
    _shard().counts[counter] += amount


def inc(name: str, amount: int = 1, **labels: str) -> None:
    add(key(name, **labels), amount)


def observe_latency(counter: Key, seconds: float) -> None:
    """Add one call's duration; ``counter`` is ``key("latency_us", circuit=...)``."""
    counts = _shard().counts
    counts[counter] += int(seconds * 1_000_000)
    peak = counter.peak  # key() gives every latency key its peak
    if peak is not None and seconds > counts[peak]:
        counts[peak] = seconds


def observe_call(counter: Key, latency: Key, seconds: float) -> None:
    """One call: ``add(counter)`` and ``observe_latency(latency, seconds)`` at once (the
    breaker's closed path)."""
    counts = _shard().counts
    counts[counter] += 1
    counts[latency] += int(seconds * 1_000_000)
    peak = latency.peak
    if peak is not None and seconds > counts[peak]:
        counts[peak] = seconds


def value(name: str, **labels: str) -> int:
    return _totals().get(key(name, **labels), 0)


def collect() -> list[tuple[str, dict[str, str], int]]:
    """Every counter as ``(name, labels, value)``: totals since the process started."""
    rows = [(k.name, dict(k.labels), count) for k, count in _totals().items()]
    return sorted(rows, key=lambda row: (row[0], sorted(row[1].items())))


def reset() -> None:
    """Forget every count (tests). Each thread counts into a new dictionary from now on."""
    global _local
    with _state_lock:
        _local = threading.local()
        _shards.clear()
        _retired.clear()


def _new_shard() -> _Shard:
    shard = _Shard()
    with _state_lock:
        _shards.append(shard)
        _local.shard = shard
    flusher.start()
    return shard


def _turn(shard: _Shard, now: float) -> None:
    minute = now // 60
    counts = shard.minutes.get(minute)
    if counts is None:
        counts = shard.minutes[minute] = defaultdict(int)
    shard.counts = counts
    shard.start = minute * 60
    shard.end = shard.start + 60


#: Per shard, the counts (as they stood) that one (minute, circuit) bucket's columns came from.
Counted = list[tuple[_Shard, dict[Key, Any]]]


def unwritten() -> tuple[dict[tuple[float, str], dict[str, Any]],
                         dict[tuple[float, str], Counted]]:
    """Per (minute, circuit): the ``CircuitMetric`` columns to add (what was counted since
    the last :func:`mark_written`), and what to pass :func:`mark_written` once they are."""
    buckets: dict[tuple[float, str], dict[str, Any]] = {}
    seen: dict[tuple[float, str], Counted] = {}
    with _state_lock:
        shards = list(_shards)
    for shard in shards:
        for minute, counts in list(shard.minutes.items()):
            snapshot = dict(counts)  # one C call: a consistent copy while its thread counts
            done = shard.written.get(minute, {})
            by_circuit: dict[str, dict[Key, Any]] = {}
            for counter, count in snapshot.items():
                column, circuit = counter.column, counter.circuit
                if column is None or circuit is None or count == done.get(counter, 0):
                    continue
                columns = buckets.setdefault((minute, circuit), {})
                if column == PEAK:
                    if count <= done.get(counter, 0.0):
                        continue
                    columns[PEAK] = max(columns.get(PEAK, 0.0), count)
                else:
                    columns[column] = columns.get(column, 0) + count - done.get(counter, 0)
                by_circuit.setdefault(circuit, {})[counter] = count
            for circuit, counted in by_circuit.items():
                seen.setdefault((minute, circuit), []).append((shard, counted))
    return buckets, seen


def mark_written(minute: float, counted: Counted) -> None:
    """The counts of ``minute`` in ``counted`` (from :func:`unwritten`) are in the database,
    or in the spool: the next :func:`unwritten` leaves them out."""
    with _state_lock:
        for shard, counts in counted:
            shard.written.setdefault(minute, {}).update(counts)


def retire() -> None:
    """Fold minutes that are over and written into the totals, dropping the oldest unwritten
    ones past ``MAX_MINUTES``; forget finished threads. The writer calls it after each try."""
    now = clock() // 60
    with _state_lock:
        for shard in list(_shards):
            minutes = sorted(shard.minutes)
            for index, minute in enumerate(minutes):
                if minute >= now - 1:
                    break  # its thread may still be counting into it
                counts = dict(shard.minutes[minute])  # a copy: no thread should count into
                done = shard.written.get(minute, {})  # it any more, but one may be late
                overflow = len(minutes) - index > MAX_MINUTES
                if not overflow and any(k.column and done.get(k, 0) != v
                                        for k, v in counts.items()):
                    continue  # not written yet
                if overflow:
                    logger.error("Dropped the unwritten call metrics of %s: more than %d "
                                 "minutes wait for the database.",
                                 datetime.fromtimestamp(minute * 60, tz=UTC), MAX_MINUTES)
                    _retired[key("metric_minutes_dropped")] = (
                        _retired.get(key("metric_minutes_dropped"), 0) + 1)
                for counter, count in counts.items():
                    if counter.column != PEAK:
                        _retired[counter] = _retired.get(counter, 0) + count
                del shard.minutes[minute]
                shard.written.pop(minute, None)
            if not shard.minutes and not shard.thread.is_alive():
                _shards.remove(shard)


def _totals() -> dict[Key, int]:
    with _state_lock:
        totals = dict(_retired)
        shards = list(_shards)
        for shard in shards:
            for counts in list(shard.minutes.values()):
                for counter, count in dict(counts).items():
                    if counter.column != PEAK:
                        totals[counter] = totals.get(counter, 0) + count
    return totals


def _after_fork_in_child() -> None:
    """The parent writes its own counts: the child starts from zero, with a new lock (the
    parent's may have been held by another thread at the fork)."""
    global _local, _shards, _retired, _state_lock
    _local = threading.local()
    _shards = []
    _retired = {}
    _state_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
