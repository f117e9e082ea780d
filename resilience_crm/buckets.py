"""The per-minute ``CircuitMetric`` rows: what :mod:`resilience_crm.metrics` counted, written
to the database off the request path.

:func:`flush_buckets` adds what this process counted since its last run to the row of the
minute each call was made in; the background flusher (:mod:`resilience_crm.flusher`) calls
:func:`write_buckets` every ``flusher.INTERVAL`` seconds. Rows from several processes add up
(``F()`` increments). While the database cannot be reached the flusher moves the unwritten
counts into the shared store's spool (:func:`spill`, :mod:`resilience_crm.spool`), and any
process's :func:`write_buckets` adds them once it is back.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from resilience_crm import metrics, spool
from resilience_crm.exceptions import SpoolUnavailable
from resilience_crm.models import Circuit, CircuitMetric

logger = logging.getLogger("resilience_crm.buckets")

#: Outcomes of calls that ran (the rest never reached the dependency). A call that ran out of
#: time is also a failure: ``timeouts`` is a part of ``failures``, not added to the calls.
RAN = ("successes", "slow", "failures")
#: The spool (:mod:`resilience_crm.spool`) counts wait in while the database is down.
KIND = "metrics"

_flush_lock = threading.Lock()  # one flush at a time


def flush_buckets() -> int:
    """Add what this process counted since the last flush to the ``CircuitMetric`` row of
    each circuit and minute; returns how many rows it wrote. When the database fails the
    counts stay in the process, under their minutes, and go with the next flush."""
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
        buckets, seen = metrics.unwritten()
        for minute, circuit in sorted(buckets):
            _add_to_bucket(circuit, datetime.fromtimestamp(minute * 60, tz=UTC),
                           buckets[minute, circuit])
            metrics.mark_written(minute, seen[minute, circuit])
            written += 1
    finally:
        metrics.retire()  # also when the database failed: that is when MAX_MINUTES matters
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
        buckets, seen = metrics.unwritten()
        records = [{"minute": minute, "circuit": circuit, "columns": buckets[minute, circuit]}
                   for minute, circuit in sorted(buckets)]
        try:
            spool.keep(KIND, records)
        except SpoolUnavailable as err:
            logger.debug("Call metrics stay in this process (%s).", err)
            return 0
        for (minute, _), counted in seen.items():  # in the spool they are as good as written
            metrics.mark_written(minute, counted)
        return len(records)
    finally:
        metrics.retire()
        _flush_lock.release()


def _write_spooled(records: list[dict[str, Any]]) -> None:
    for record in records:
        _add_to_bucket(record["circuit"], datetime.fromtimestamp(record["minute"] * 60, tz=UTC),
                       dict(record["columns"]))


def _add_to_bucket(name: str, bucket: datetime, columns: dict[str, Any]) -> None:
    slowest = columns.pop(metrics.PEAK, 0.0)
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
    """A new lock: the parent's may have been held by another thread at the fork."""
    global _flush_lock
    _flush_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
