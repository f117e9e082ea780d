"""The audit trail of transitions, written off the request path and kept while the database
is down.

:func:`record_transition` only puts the event in this process's buffer and wakes the
background flusher (:mod:`resilience_crm.flusher`), which writes a ``CircuitEvent``
and moves
the circuit's durable row forward, on its own connection: so an event made inside a caller's
transaction outlives that transaction rolling back. While the database cannot be reached
the flusher moves the events into the shared store's spool (:func:`spill`,
:mod:`resilience_crm.spool`), where they outlive this process and any process's
:func:`write_pending` writes them; without a shared store they wait, in order, in a buffer
of :data:`BUFFER_SIZE`, past which the oldest is dropped with an error and counted
(``metrics.value("events_dropped")``). :func:`flush` writes the buffer now, from the
calling thread, for the admin, the management commands and tests.

Writing the same event twice is harmless: (circuit, generation, from_state, to_state) is
unique among the cluster's events. Events of a worker's local breaker (``source="local"``,
made while the shared store was down) are kept apart: they never move the circuit's row and
are not part of that uniqueness, so they cannot take a generation of the shared store's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from datetime import datetime
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from resilience_crm import flusher, metrics, spool
from resilience_crm.breakers.machine import FORCEABLE
from resilience_crm.exceptions import SpoolUnavailable
from resilience_crm.models import Circuit, CircuitEvent

logger = logging.getLogger("resilience_crm.breakers.events")

#: Events kept while the database is down; past this the oldest are dropped, with an error.
BUFFER_SIZE = 10_000
#: Errors that mean the database cannot be reached (the event waits); any other
#: ``DatabaseError`` means it refuses this event, which is logged and dropped.
UNREACHABLE = flusher.UNREACHABLE
#: ``CircuitEvent.source`` of a worker's own breaker while the shared store was down.
LOCAL = "local"
#: The spool (:mod:`resilience_crm.spool`) events wait in while the database is down.
KIND = "events"

_pending: deque[dict[str, Any]] = deque()
_buffer_lock = threading.Lock()  # held for a buffer operation only, never across I/O
_write_lock = threading.Lock()  # one writer at a time, so events are written in order
_in_hand: deque[dict[str, Any]] = deque()  # taken from the buffer by the writer, not written


def record_transition(
    name: str, from_state: str, to_state: str, generation: int, reason: str = "",
    actor: Any = None, at: datetime | None = None, source: str = "breaker",
) -> None:
    """Buffer the event and wake the flusher; never touches the database."""
    event = {
        "name": name, "from_state": from_state, "to_state": to_state, "generation": generation,
        "reason": reason[:500], "actor_id": getattr(actor, "pk", None), "source": source,
        "at": at or timezone.now(),
    }
    with _buffer_lock:
        _append(event)
    flusher.wake()


def flush(timeout: float = 10.0) -> int:
    """Write the buffered events now, from the calling thread; returns how many were written.

    Inside a transaction the caller opened (which may yet roll back) nothing is written on
    its connection: the flush runs when it commits, and the flusher writes the events anyway.
    Waits up to ``timeout`` seconds for a flush under way in another thread. When the
    database cannot be reached the events stay buffered and this returns what it wrote."""
    if not _pending and not _in_hand:
        return 0  # (when the flusher is writing, wait for it: the caller expects the rows)
    db = _database()
    if _in_callers_transaction(db):
        transaction.on_commit(flush, using=db)
        return 0
    try:
        return write_pending(timeout)
    except UNREACHABLE as err:
        logger.warning("Could not write %d buffered circuit events (%s); they wait.",
                       len(_pending), err)
    except Exception:  # the caller's own action has happened; its bookkeeping must not fail it
        logger.exception("Writing buffered circuit events failed; they wait.")
    return 0


def write_pending(timeout: float = -1) -> int:
    """Write the buffered events in order; raises one of ``UNREACHABLE`` (the unwritten
    events go back to the front of the buffer) when the database cannot be reached. This is
    the flusher's task; :func:`flush` is the one to call."""
    if not _write_lock.acquire(timeout=timeout):
        return 0
    try:
        with _buffer_lock:
            _in_hand.extend(_pending)
            _pending.clear()
        written = 0
        while _in_hand:
            event = _in_hand[0]
            try:
                written += _write(event)
            except UNREACHABLE:
                _put_back()
                raise
            except DatabaseError:  # refused for good: must not hold up the ones behind it
                logger.exception("Dropping circuit event %s: the database refuses it.", event)
            except BaseException:  # a bug, or the thread stopped: keep the events for later
                _put_back()
                raise
            with _buffer_lock:
                _in_hand.popleft()
    finally:
        _write_lock.release()
    if written:
        logger.info("Wrote %d buffered circuit events.", written)
    return written + spool.drain(KIND, _write_spooled)


def spill(timeout: float = -1) -> int:
    """Move the buffered events into the shared store's spool, where they outlive this
    process and any process writes them once the database is back; returns how many moved.
    Without a shared store (or when it fails) they stay buffered here.

    When the writer does not let go within ``timeout`` seconds (at exit, a writer stuck on a
    database that hangs never will), the events it holds are copied too: written twice, an
    event of the cluster's is one row; the writer would have to finish in the moment the
    process ends for a local one to be written twice."""
    locked = _write_lock.acquire(timeout=timeout)
    try:
        with _buffer_lock:
            held = [] if locked else list(_in_hand)
            batch = list(_pending)
            _pending.clear()
        try:
            spool.keep(KIND, [{**event, "at": event["at"].isoformat()}
                              for event in held + batch])
        except SpoolUnavailable as err:
            with _buffer_lock:
                _restore(batch)
            logger.debug("Circuit events stay in this process (%s).", err)
            return 0
    finally:
        if locked:
            _write_lock.release()
    return len(held) + len(batch)


def pending_count() -> int:
    """Events not yet written: buffered, or being written now."""
    return len(_pending) + len(_in_hand)


def clear() -> None:
    """Forget the buffered events (tests)."""
    with _buffer_lock:
        _pending.clear()


def _append(event: dict[str, Any]) -> None:
    """Add ``event`` at the end, dropping the oldest when full. Under ``_buffer_lock``."""
    while len(_pending) >= BUFFER_SIZE:
        _drop(_pending.popleft())
    _pending.append(event)


def _put_back() -> None:
    """Return the writer's unwritten events to the front of the buffer."""
    with _buffer_lock:
        _restore(list(_in_hand))
        _in_hand.clear()


def _restore(events: list[dict[str, Any]]) -> None:
    """Put ``events`` back in front of those made meanwhile, keeping the newest
    ``BUFFER_SIZE`` of all. Under ``_buffer_lock``."""
    merged = [*events, *_pending]
    _pending.clear()
    for event in merged[:-BUFFER_SIZE] if len(merged) > BUFFER_SIZE else ():
        _drop(event)
    _pending.extend(merged[-BUFFER_SIZE:])


def _drop(event: dict[str, Any]) -> None:
    metrics.inc("events_dropped")
    logger.error("Event buffer full (%d waiting for the database); dropped %s", BUFFER_SIZE,
                 event)


def _database() -> str:
    return router.db_for_write(CircuitEvent) or DEFAULT_DB_ALIAS


def _in_callers_transaction(db: str) -> bool:
    """Whether writes on ``db`` would join a transaction opened around us. The test case's
    own transaction (flagged by Django's ``TestCase``) does not count: it never commits."""
    connection = connections[db]
    return connection.in_atomic_block and not all(
        getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )


def _write_spooled(records: list[dict[str, Any]]) -> None:
    """Write a batch of events from the spool; like the buffered ones, an event the database
    refuses is logged and dropped."""
    for record in records:
        event = {**record, "at": datetime.fromisoformat(record["at"])}
        try:
            _write(event)
        except UNREACHABLE:
            raise
        except DatabaseError:
            logger.exception("Dropping circuit event %s: the database refuses it.", event)


def _write(event: dict[str, Any]) -> int:
    """Write one event; 1 if a row was added, 0 if it was already there."""
    db = _database()
    local = event["source"] == LOCAL
    with transaction.atomic(using=db):
        circuit, _ = Circuit.objects.using(db).get_or_create(name=event["name"])
        if not local:  # a local breaker's view never becomes the circuit's durable state
            _move_row(db, circuit.pk, event)
        identity = {"circuit": circuit, "generation": event["generation"],
                    "from_state": event["from_state"], "to_state": event["to_state"]}
        try:
            with transaction.atomic(using=db):
                CircuitEvent.objects.using(db).create(
                    **identity, reason=event["reason"], source=event["source"],
                    actor_id=event["actor_id"], created_at=event["at"],
                )
        except IntegrityError:
            if local or not CircuitEvent.objects.using(db).filter(**identity).exclude(
                source=LOCAL
            ).exists():
                raise  # not a copy of an event already written: the database refuses it
            logger.debug("Circuit %s: event %s -> %s (generation %s) already written.",
                         event["name"], event["from_state"], event["to_state"],
                         event["generation"])
            return 0
    return 1


def _move_row(db: str, pk: int, event: dict[str, Any]) -> None:
    rows = Circuit.objects.using(db).filter(pk=pk)
    rows.filter(generation__lt=event["generation"]).update(
        state=event["to_state"], generation=event["generation"]
    )
    if event["to_state"] not in FORCEABLE:  # a reset, or a forced state that lapsed
        # (<=: the database store has already moved the row's generation itself)
        rows.filter(generation__lte=event["generation"]).exclude(forced_state="").update(
            forced_state="", forced_reason="", forced_by=None, forced_until=None
        )


def _after_fork_in_child() -> None:
    """The parent writes its own events: the child starts with an empty buffer, and new
    locks (the parent's may have been held by another thread at the fork)."""
    global _pending, _in_hand, _buffer_lock, _write_lock
    _pending = deque()
    _in_hand = deque()
    _buffer_lock = threading.Lock()
    _write_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
