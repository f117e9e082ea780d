"""Counters kept by this worker process: calls by outcome, rejections, latency, transitions,
store errors.

They are cheap enough for the hot path (one dict update under the GIL) and are read by the
status command, the readiness endpoint and the metrics exposition. :func:`flush_buckets`
adds what was counted since its last run to the per-minute ``CircuitMetric`` rows; the app
calls it after a response has been sent, at most every ``BUCKET_FLUSH_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

logger = logging.getLogger("resilience_crm.metrics")

#: Seconds between writes of the per-minute buckets from one process.
BUCKET_FLUSH_INTERVAL = 10.0
#: ``CircuitMetric`` column for each outcome counted under ``calls``.
COLUMNS = {"success": "successes", "slow": "slow", "failure": "failures",
           "timeout": "timeouts", "rejected": "rejected", "fallback": "fallbacks"}
#: Outcomes of calls that ran (the rest never reached the dependency).
RAN = ("successes", "slow", "failures", "timeouts")

_counters: Counter[tuple[Any, ...]] = Counter()
_written: Counter[tuple[Any, ...]] = Counter()  # what flush_buckets has already written
_latency_max: dict[str, float] = {}  # seconds, per circuit, since the last flush
_flush_lock = threading.Lock()
_last_flush = time.monotonic()


def key(name: str, **labels: str) -> tuple[Any, ...]:
    """The counter's key; hot paths build it once and pass it to :func:`add`."""
    return (name, *sorted(labels.items()))


def add(counter: tuple[Any, ...], amount: int = 1) -> None:
    _counters[counter] += amount


def inc(name: str, amount: int = 1, **labels: str) -> None:
    _counters[key(name, **labels)] += amount


def observe_latency(counter: tuple[Any, ...], circuit: str, seconds: float) -> None:
    """Add one call's duration; ``counter`` is ``key("latency_us", circuit=circuit)``."""
    _counters[counter] += int(seconds * 1_000_000)
    if seconds > _latency_max.get(circuit, 0.0):
        _latency_max[circuit] = seconds


def value(name: str, **labels: str) -> int:
    return _counters[key(name, **labels)]


def collect() -> list[tuple[str, dict[str, str], int]]:
    """Every counter as ``(name, labels, value)``."""
    return [(key[0], dict(key[1:]), count) for key, count in sorted(_counters.items())]


def reset() -> None:
    global _last_flush
    _counters.clear()
    _written.clear()
    _latency_max.clear()
    _last_flush = time.monotonic()


def maybe_flush_buckets() -> None:
    """:func:`flush_buckets` if ``BUCKET_FLUSH_INTERVAL`` has passed since the last one."""
    global _last_flush
    if time.monotonic() - _last_flush < BUCKET_FLUSH_INTERVAL:
        return
    _last_flush = time.monotonic()
    flush_buckets()


def flush_buckets() -> int:
    """Add what this process counted since the last flush to the current minute's
    ``CircuitMetric`` row of each circuit; returns how many rows it wrote. When the database
    fails the counts stay here and go with the next flush."""
    from django.db import DatabaseError
    from django.utils import timezone

    if not _flush_lock.acquire(blocking=False):
        return 0  # another thread is flushing
    try:
        pending: dict[str, tuple[dict[str, int], list[tuple[tuple[Any, ...], int]]]] = {}
        for counter, count in list(_counters.items()):
            delta = count - _written[counter]
            labels = dict(counter[1:])
            if not delta or "circuit" not in labels:
                continue
            if counter[0] == "calls" and labels.get("outcome") in COLUMNS:
                column = COLUMNS[labels["outcome"]]
            elif counter[0] == "latency_us":
                column = "latency_us"
            else:
                continue
            columns, seen = pending.setdefault(labels["circuit"], ({}, []))
            columns[column] = delta
            seen.append((counter, count))
        bucket = timezone.now().replace(second=0, microsecond=0)
        written = 0
        for circuit, (columns, seen) in pending.items():
            slowest = _latency_max.pop(circuit, 0.0)
            try:
                _add_to_bucket(circuit, bucket, columns, slowest)
            except DatabaseError as err:
                if slowest > _latency_max.get(circuit, 0.0):
                    _latency_max[circuit] = slowest
                logger.warning("Could not write call metrics (%s); they wait for the next "
                               "flush.", err)
                break
            for counter, count in seen:
                _written[counter] = count
            written += 1
        return written
    finally:
        _flush_lock.release()


def _add_to_bucket(name: str, bucket: Any, columns: dict[str, int], slowest: float) -> None:
    from django.db import IntegrityError, router, transaction
    from django.db.models import F, Value
    from django.db.models.functions import Greatest

    from resilience_crm.models import Circuit, CircuitMetric

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
