"""The audit trail of transitions, kept even while the database is down.

:func:`record_transition` writes a ``CircuitEvent`` and moves the circuit's durable state
forward. When the database does not answer, the event waits in a bounded buffer in this
process and :func:`flush_pending` writes it when the database is back; the breaker calls
that every few seconds. Writing the same event twice is harmless: the unique constraint on
(circuit, generation, to_state) keeps one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import datetime
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from resilience_crm.core import FORCEABLE

logger = logging.getLogger("resilience_crm.events")

#: Events kept while the database is down; past this the oldest are dropped, with an error.
BUFFER_SIZE = 10_000
#: Errors that mean the database cannot be reached (the event waits); any other
#: ``DatabaseError`` means it refuses this event, which is logged and dropped.
UNREACHABLE = (OperationalError, InterfaceError)

_pending: deque[dict[str, Any]] = deque(maxlen=BUFFER_SIZE)
_lock = threading.Lock()


def record_transition(
    name: str, from_state: str, to_state: str, generation: int, reason: str = "",
    actor: Any = None, at: datetime | None = None, source: str = "breaker",
) -> None:
    event = {
        "name": name, "from_state": from_state, "to_state": to_state, "generation": generation,
        "reason": reason[:500], "actor_id": getattr(actor, "pk", None), "source": source,
        "at": at or timezone.now(),
    }
    db = _database()
    if _in_callers_transaction(db):
        # The call that made the transition may well roll this transaction back (it failed,
        # after all): keep the event here, write it once the transaction commits or, if it
        # does not, with the next flush outside it.
        with _lock:
            _pending.append(event)
        transaction.on_commit(flush_pending, using=db)
        return
    flush_pending()
    try:
        _write(event)
    except UNREACHABLE as err:
        _buffer(event, err)
    except DatabaseError:
        logger.exception("Circuit %s: the database refused the %s -> %s event; dropped.",
                         name, from_state, to_state)


def flush_pending() -> int:
    """Write buffered events; returns how many were written. Cheap when there are none.

    Does nothing inside a transaction the caller opened, which may yet roll back."""
    if not _pending or _in_callers_transaction(_database()):
        return 0
    written = 0
    with _lock:
        while _pending:
            event = _pending[0]
            try:
                _write(event)
                written += 1
            except UNREACHABLE:
                break  # still down: keep it, and the rest, in order
            except DatabaseError:  # refused for good: must not hold up the ones behind it
                logger.exception("Dropping circuit event %s: the database refuses it.", event)
            _pending.popleft()
    if written:
        logger.info("Wrote %d circuit events buffered while the database was down.", written)
    return written


def pending_count() -> int:
    return len(_pending)


def _buffer(event: dict[str, Any], err: Exception) -> None:
    with _lock:
        if len(_pending) == _pending.maxlen:
            dropped = _pending.popleft()
            logger.error("Event buffer full; dropped %s", dropped)
        _pending.append(event)
    logger.warning(
        "Circuit %s: could not write the %s -> %s event (%s); buffered (%d waiting).",
        event["name"], event["from_state"], event["to_state"], err, len(_pending),
    )


def _database() -> str:
    from resilience_crm.models import CircuitEvent

    return router.db_for_write(CircuitEvent) or DEFAULT_DB_ALIAS


def _in_callers_transaction(db: str) -> bool:
    """Whether writes on ``db`` would join a transaction opened around us. The test case's
    own transaction (flagged by Django's ``TestCase``) does not count: it never commits."""
    connection = connections[db]
    return connection.in_atomic_block and not all(
        getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )


def _write(event: dict[str, Any]) -> None:
    from resilience_crm.models import Circuit, CircuitEvent

    db = _database()
    with transaction.atomic(using=db):
        circuit, _ = Circuit.objects.using(db).get_or_create(name=event["name"])
        rows = Circuit.objects.using(db).filter(pk=circuit.pk)
        rows.filter(generation__lt=event["generation"]).update(
            state=event["to_state"], generation=event["generation"]
        )
        if event["to_state"] not in FORCEABLE:  # a reset, or a forced state that lapsed
            # (<=: the database store has already moved the row's generation itself)
            rows.filter(generation__lte=event["generation"]).exclude(forced_state="").update(
                forced_state="", forced_reason="", forced_by=None, forced_until=None
            )
        try:
            with transaction.atomic(using=db):
                CircuitEvent.objects.using(db).create(
                    circuit=circuit, generation=event["generation"],
                    from_state=event["from_state"], to_state=event["to_state"],
                    reason=event["reason"], source=event["source"], actor_id=event["actor_id"],
                    created_at=event["at"],
                )
        except IntegrityError:
            pass  # already written: by this buffer's earlier attempt, or the database store
