"""Counters kept by this worker process: calls by outcome, rejections, latency, transitions,
store errors.

Exact and cheap enough for the hot path: each thread counts into its own dictionary (no
lock, no lost increments between threads), under the minute of the call. The status
command, the readiness endpoint and the metrics exposition read the totals with
:func:`collect` / :func:`value`. :func:`flush_buckets` adds what was counted since its last
run to the ``CircuitMetric`` row of the minute each call was made in; the background flusher
(:mod:`resilience_crm.flusher`) calls it every ``flusher.INTERVAL`` seconds. While the
database cannot be reached the flusher moves the unwritten counts into the shared store's
spool (:func:`spill`, :mod:`resilience_crm.spool`), and any process's
:func:`write_buckets`
adds them once it is back. A forked child starts with empty counters.
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

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from resilience_crm import flusher, spool
from resilience_crm.exceptions import SpoolUnavailable

logger = logging.getLogger("resilience_crm.metrics")

#: ``CircuitMetric`` column for each outcome counted under ``calls``.
COLUMNS = {"success": "successes", "slow": "slow", "failure": "failures",
           "timeout": "timeouts", "rejected": "rejected", "fallback": "fallbacks"}
#: Outcomes of calls that ran (the rest never reached the dependency). A call that ran out of
#: time is also a failure: ``timeouts`` is a part of ``failures``, not added to the calls.
RAN = ("successes", "slow", "failures")
#: Minutes of counts one thread keeps while the database is down; older ones are dropped
#: unwritten (with an error, counted as ``metric_minutes_dropped``).
MAX_MINUTES = 24 * 60
PEAK = "latency_max"
#: The spool (:mod:`resilience_crm.spool`) counts wait in while the database is down.
KIND = "metrics"

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
        self.written: dict[float, dict[Key, Any]] = {}  # what flush_buckets wrote of each
        self.thread = threading.current_thread()


_keys: dict[tuple[Any, ...], Key] = {}
_local = threading.local()
_shards: list[_Shard] = []
_retired: dict[Key, int] = {}  # totals of minutes written and forgotten
_state_lock = threading.Lock()  # shards, written and retired; never held across I/O
_flush_lock = threading.Lock()  # one flush at a time


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


def flush_buckets() -> int:
    """Add what this process counted since the last flush to the ``CircuitMetric`` row of
    each circuit and minute; returns how many rows it wrote. When the database fails the
    counts stay here, under their minutes, and go with the next flush."""
    try:
        return write_buckets(blocking=False)
    except DatabaseError as err:
        logger.warning("Could not write call metrics (%s); they wait for the next flush.", err)
        return 0


def write_buckets(blocking: bool = True) -> int:
    """:func:`flush_buckets`, raising the database's error; the flusher's task."""
    if not _flush_lock.acquire(blocking=blocking):
        return 0  # another thread is flushing
    written = 0
    try:
        buckets, seen = _unwritten()
        for minute, circuit in sorted(buckets):
            columns = buckets[minute, circuit]
            _add_to_bucket(circuit, datetime.fromtimestamp(minute * 60, tz=UTC), columns)
            with _state_lock:
                for shard, counts in seen[minute, circuit]:
                    shard.written.setdefault(minute, {}).update(counts)
            written += 1
    finally:
        _retire()  # also when the database failed: that is when MAX_MINUTES matters
        _flush_lock.release()
    return written + spool.drain(KIND, _write_spooled)


def spill(timeout: float = -1) -> int:
    """Move the counts not yet written into the shared store's spool, where they outlive
    this process and any process adds them to their buckets once the database is back;
    returns how many (minute, circuit) buckets moved. Without a shared store (or when it
    fails) they stay here."""
    if not _flush_lock.acquire(timeout=timeout):
        return 0
    try:
        buckets, seen = _unwritten()
        records = [{"minute": minute, "circuit": circuit, "columns": buckets[minute, circuit]}
                   for minute, circuit in sorted(buckets)]
        try:
            spool.keep(KIND, records)
        except SpoolUnavailable as err:
            logger.debug("Call metrics stay in this process (%s).", err)
            return 0
        with _state_lock:  # in the spool they are as good as written
            for (minute, _), counted in seen.items():
                for shard, counts in counted:
                    shard.written.setdefault(minute, {}).update(counts)
        return len(records)
    finally:
        _retire()
        _flush_lock.release()


def _write_spooled(records: list[dict[str, Any]]) -> None:
    for record in records:
        _add_to_bucket(record["circuit"], datetime.fromtimestamp(record["minute"] * 60, tz=UTC),
                       dict(record["columns"]))


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


def _unwritten() -> tuple[dict[tuple[float, str], dict[str, Any]],
                          dict[tuple[float, str], list[tuple[_Shard, dict[Key, Any]]]]]:
    """Per (minute, circuit): the columns to add, and per shard the counts they came from."""
    buckets: dict[tuple[float, str], dict[str, Any]] = {}
    seen: dict[tuple[float, str], list[tuple[_Shard, dict[Key, Any]]]] = {}
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


def _retire() -> None:
    """Fold minutes that are over and written into the totals; forget finished threads."""
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


def _add_to_bucket(name: str, bucket: datetime, columns: dict[str, Any]) -> None:
    from resilience_crm.models import Circuit, CircuitMetric

    slowest = columns.pop(PEAK, 0.0)
    latency_sum_ms = columns.pop("latency_us", 0) / 1000
    calls = sum(columns.get(column, 0) for column in RAN)
    db = router.db_for_write(CircuitMetric)
    with transaction.atomic(using=db):
        circuit, _ = Circuit.objects.using(db).get_or_create(name=name)
        rows = CircuitMetric.objects.using(db).filter(circuit=circuit, bucket=bucket)
        increments: dict[str, Any] = {column: F(column) + n for column, n in columns.items()}
        increments.update(
            calls=F("calls") + calls,
            latency_sum_ms=F("latency_sum_ms") + latency_sum_ms,
            latency_max_ms=Greatest("latency_max_ms", Value(slowest * 1000)),
        )
        if rows.update(**increments):
            return
        try:
            with transaction.atomic(using=db):
                CircuitMetric.objects.using(db).create(
                    circuit=circuit, bucket=bucket, calls=calls, latency_sum_ms=latency_sum_ms,
                    latency_max_ms=slowest * 1000, **columns,
                )
        except IntegrityError:  # another process made the row first
            rows.update(**increments)


def _after_fork_in_child() -> None:
    """The parent writes its own counts: the child starts from zero, with new locks (the
    parent's may have been held by another thread at the fork)."""
    global _local, _shards, _retired, _state_lock, _flush_lock
    _local = threading.local()
    _shards = []
    _retired = {}
    _state_lock = threading.Lock()
    _flush_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
