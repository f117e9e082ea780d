"""Replaying queued writes, exactly once, when the database is back.

:func:`replay` moves the Redis stream into ``QueuedWrite`` rows (:func:`drain`), then applies
pending rows one by one: a row is leased to one replayer (``lease_owner``, ``lease_until``;
:func:`claim`) and applied in a transaction that also marks it applied (:func:`apply`), so a
replayer killed midway leaves the row to be taken over when its lease ends and its effect
rolled back. Writes of one entity are applied in the order submitted. A write whose handler
keeps failing becomes a dead letter after ``MAX_ATTEMPTS``, listed in the admin, where
``requeue`` puts it back; one that no attempt can fix (the database refuses its data, it fails
validation) becomes one at once, so it never holds up the writes behind it.

The write circuit closing again starts a replay in the background
(:func:`replay_in_background`, from ``resilience_crm.receivers.replay_on_close``); and since
a write may be queued after that replay drained the queue (a worker whose view of the circuit
was still open, a call that timed out during the recovery), the flusher asks
:func:`replay_due` every round: what waits while every write circuit passes calls is replayed
within ``REPLAY_EVERY`` seconds. ``manage.py resilience_replay`` runs one on demand.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connections, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

import resilience_crm.provider.cache as cache
import resilience_crm.provider.classify as classify
import resilience_crm.provider.handlers as handlers
import resilience_crm.provider.probe as probe
import resilience_crm.provider.stream as stream
from resilience_crm.breakers import machine
from resilience_crm.breakers.registry import get_breaker
from resilience_crm.exceptions import CircuitOpenError, InvalidWrite, QueueUnavailable
from resilience_crm.models import QueuedWrite

logger = logging.getLogger("resilience_crm.provider.replay")

#: Failed attempts after which a queued write becomes a dead letter.
MAX_ATTEMPTS = 5
#: Seconds a replayer holds a row it is applying.
LEASE_SECONDS = 30.0
#: Stream entries moved into the database per round trip.
DRAIN_BATCH = 100
UNFINISHED = (QueuedWrite.State.PENDING, QueuedWrite.State.APPLYING, QueuedWrite.State.FAILED)
#: Seconds between a process's looks for writes left waiting (:func:`replay_due`).
REPLAY_EVERY = 10.0


@dataclass
class ReplayReport:
    moved: int = 0
    applied: int = 0
    failed: int = 0
    dead: int = 0
    stopped: str = ""


def replay(*, lease: float = LEASE_SECONDS, limit: int | None = None,
           owner: str | None = None) -> ReplayReport:
    """Move queued writes from Redis into ``QueuedWrite`` rows, then apply pending rows
    (those whose replayer's lease ran out included), oldest first, each entity in order."""
    report = ReplayReport()
    owner = owner or uuid.uuid4().hex
    try:
        report.moved = drain()
    except QueueUnavailable as err:
        logger.warning("Write queue: Redis unavailable, replaying rows only (%s)", err.__cause__)
    for db in handlers.databases():
        tried: set[int] = set()
        while limit is None or report.applied + report.failed < limit:
            try:
                row = claim(owner, lease, skip=tried, using=db)
            except DatabaseError as err:  # down, or known down (the query guard's circuit)
                report.stopped = _stopped_by(err)
                return report
            if row is None:
                break
            tried.add(row.pk)
            outcome = apply(row, owner)
            if outcome == "stop":
                report.stopped = _stopped_by(None)
                return report
            setattr(report, outcome, getattr(report, outcome) + 1)
            if outcome == "dead":
                report.failed += 1
    return report


def _stopped_by(err: BaseException | None) -> str:
    """Why a replay stopped: the database failed, or a circuit refuses it (``err``)."""
    if isinstance(err, CircuitOpenError):
        retry = f", tried again in {err.retry_after:.0f}s" if err.retry_after else ""
        return f"circuit {err.circuit} is open{retry}; the rest waits for the next replay"
    return "the database failed; the rest waits for the next replay"


def drain() -> int:
    """Move every write in the Redis stream into a ``QueuedWrite`` row (idempotent: a key
    already in the table is not added twice); returns how many were moved. An entry the
    table cannot hold (queued before ``validate`` refused such writes) becomes a dead letter
    rather than stopping the drain; a database that fails stops it, the entry kept."""
    if not stream.available():
        return 0
    moved = 0
    try:
        client, redis_cache = stream.connection()
        key = redis_cache.make_key(stream.STREAM_KEY)
        while True:
            entries = client.xrange(key, count=DRAIN_BATCH)
            if not entries:
                return moved
            for entry_id, fields in entries:
                data = {stream.text(k): stream.text(v) for k, v in fields.items()}
                try:
                    _store_row(data)
                except Exception as err:
                    if not classify.is_permanent(err):
                        raise
                    _store_dead_letter(stream.text(entry_id), data, err)
                client.xdel(key, entry_id)
                client.delete(stream.marker(redis_cache, data.get("key", "")))
                moved += 1
    except QueueUnavailable:
        raise
    except Exception as err:
        if classify.classify(err).dependency and not _is_database_error(err):
            raise QueueUnavailable() from err
        raise


def _store_row(data: dict[str, str]) -> None:
    problems = handlers.row_errors(idempotency_key=data["key"], entity=data.get("entity", ""))
    if problems:
        raise InvalidWrite(problems)
    db = handlers.database_of(data["name"])
    with transaction.atomic(using=db):
        row, created = QueuedWrite.objects.using(db).get_or_create(
            idempotency_key=data["key"],
            defaults={"name": data["name"], "payload": json.loads(data["payload"]),
                      "payload_hash": data["hash"], "entity": data.get("entity", "")},
        )
    if not created and row.payload_hash != data["hash"]:
        logger.error("Write queue: %s was queued with a payload other than the one applied "
                     "under the same key; the queued one is dropped.", data["key"])


def _store_dead_letter(entry_id: str, data: dict[str, str], err: Exception) -> None:
    """Keep a stream entry that ``_store_row`` refused as a dead letter with its error; its
    key stands in ``last_error`` when the column cannot hold it (the stream's entry id
    replaces it, unique and the same if a drain stopped midway tries again)."""
    key = data.get("key", "")
    if handlers.row_errors(idempotency_key=key, entity=""):
        key = f"invalid-entry:{entry_id}"
    try:
        payload = json.loads(data.get("payload", "null"))
    except ValueError:
        payload = data.get("payload")
    error = f"{err.__class__.__name__}: {err} (idempotency key {data.get('key', '')!r}, " \
            f"entity {data.get('entity', '')!r})"
    logger.error("Write queue: the queued write %s cannot be stored, kept as a dead letter: %s",
                 key, error)
    db = handlers.database_of(data.get("name", ""))
    QueuedWrite.objects.using(db).get_or_create(idempotency_key=key, defaults={
        "name": data.get("name", "")[:200], "payload": payload,
        "payload_hash": data.get("hash", "")[:64], "state": QueuedWrite.State.DEAD,
        "last_error": error[:2000]})


def claim(owner: str, lease: float = LEASE_SECONDS, skip: set[int] | None = None,
          using: str = "default") -> QueuedWrite | None:
    """Lease the oldest row that may be applied now to ``owner``: pending, failed before (one
    more attempt per replay), or applying under a lease that ran out; and with no earlier
    unfinished write of the same entity, on the database ``using``."""
    db = using
    now = timezone.now()
    ready = (Q(state__in=[QueuedWrite.State.PENDING, QueuedWrite.State.FAILED])
             | Q(state=QueuedWrite.State.APPLYING, lease_until__lt=now))
    earlier = QueuedWrite.objects.using(db).filter(
        entity=OuterRef("entity"), id__lt=OuterRef("id"), state__in=UNFINISHED)
    with transaction.atomic(using=db):
        # One row, locked alone: a replayer claiming at the same moment skips it and takes
        # the next, rather than finding every candidate locked and stopping.
        row = (QueuedWrite.objects.using(db).select_for_update(skip_locked=True)
               .filter(ready).filter(Q(entity="") | ~Exists(earlier))
               .exclude(pk__in=skip or ()).order_by("id").first())
        if row is None:
            return None
        row.state = QueuedWrite.State.APPLYING
        row.lease_owner, row.lease_until = owner, now + timedelta(seconds=lease)
        row.attempts += 1
        row.save(update_fields=["state", "lease_owner", "lease_until", "attempts",
                                "updated_at"])
        return row


def apply(row: QueuedWrite, owner: str) -> str:
    """Apply one leased row; ``"applied"``, ``"failed"``, ``"dead"``, or ``"stop"`` when the
    database itself failed (the row keeps its lease and is taken over later)."""
    db = row._state.db or "default"
    try:
        found = handlers.handler(row.name)
        with transaction.atomic(using=db):
            locked = QueuedWrite.objects.using(db).select_for_update().get(pk=row.pk)
            if locked.lease_owner != owner or locked.state != QueuedWrite.State.APPLYING:
                return "failed"  # another replayer took it over
            locked.result = found.fn(locked.payload)
            locked.state, locked.applied_at = QueuedWrite.State.APPLIED, timezone.now()
            locked.lease_owner, locked.lease_until = "", None
            locked.save(update_fields=["result", "state", "applied_at", "lease_owner",
                                       "lease_until", "updated_at"])
        _invalidate(found.key)
        return "applied"
    except Exception as exc:
        if _is_database_error(exc) and classify.classify(exc).dependency:
            logger.warning("Write queue: database failed while replaying %s: %s",
                           row.idempotency_key, exc)
            return "stop"
        return _record_failure(row, exc)


def _record_failure(row: QueuedWrite, exc: Exception) -> str:
    """A failed attempt: a dead letter when no attempt can succeed or this was the last."""
    dead = classify.is_permanent(exc) or row.attempts >= MAX_ATTEMPTS
    state = QueuedWrite.State.DEAD if dead else QueuedWrite.State.FAILED
    logger.warning("Write queue: %s %s failed (attempt %s): %r", row.name,
                   row.idempotency_key, row.attempts, exc)
    QueuedWrite.objects.using(row._state.db or "default").filter(pk=row.pk).update(
        state=state, last_error=f"{exc.__class__.__name__}: {exc}"[:2000], lease_owner="",
        lease_until=None, updated_at=timezone.now())
    return "dead" if dead else "failed"


def _invalidate(key: str) -> None:
    """Make reads in ``key``'s space stale everywhere (other processes' own layers within
    ``cache.LOCAL_TTL``)."""
    cache.ReadCache().invalidate(cache.space_of(key))


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseError)


_replaying = threading.Lock()


def replay_in_background() -> bool:
    """Start :func:`replay` in a thread unless one runs in this process already."""
    if not _replaying.acquire(blocking=False):
        return False

    def run() -> None:
        try:
            report = replay()
            if report.moved or report.applied or report.failed:
                logger.info("Write queue replayed: %s", report)
        except Exception:
            logger.exception("Write queue: replay failed")
        finally:
            connections.close_all()
            _replaying.release()

    threading.Thread(target=run, name="resilience-replay", daemon=True).start()
    return True


_next_look = 0.0


def replay_due(*, now: float | None = None) -> bool:
    """A flusher round: start a replay when writes wait (in the Redis stream, or pending
    rows) and every write circuit passes calls, at most every ``REPLAY_EVERY`` seconds;
    returns whether one started. Nothing is asked of Redis or the database while a write
    circuit struggles (its closing will start the replay)."""
    global _next_look
    now = time.monotonic() if now is None else now
    if now < _next_look or not handlers.circuits():
        return False
    _next_look = now + REPLAY_EVERY
    if any(get_breaker(name).state in machine.STRUGGLING for name in handlers.circuits()):
        return False
    waiting = probe.stream_length() > 0 or any(
        QueuedWrite.objects.using(db).filter(state=QueuedWrite.State.PENDING).exists()
        for db in handlers.databases())
    return waiting and replay_in_background()
