"""Writes that outlive a database outage: applied now, or queued outside the database and
replayed exactly once when it is back.

``submit`` applies a registered handler in one transaction with a ``QueuedWrite`` row that
holds the idempotency key (unique), its payload hash and the handler's result. While the
write circuit is open or the database cannot be reached, the write goes to a Redis stream
instead (with its key, atomically, by ``enqueue.lua``). ``replay`` moves the stream into
``QueuedWrite`` rows, then applies pending rows one by one: a row is leased to one replayer
(``lease_owner``, ``lease_until``) and applied in a transaction that also marks it applied,
so a replayer killed midway leaves the row to be taken over when its lease ends and its
effect rolled back. A write whose handler keeps failing becomes a dead letter after
``MAX_ATTEMPTS``, listed in the admin, where ``requeue`` puts it back; one that no attempt
can fix (the database refuses its data, it fails validation) becomes one at once, so it
never holds up the writes behind it. ``validate`` refuses, before anything is applied or
queued, what the database would refuse: a key or entity longer than its column, a payload
its handler's model cannot hold.

Without Redis (the embedded default) there is nowhere outside the database to put a write:
``submit`` then raises :class:`~resilience_crm.exceptions.QueueUnavailable` (HTTP 503) while
the database is unreachable, and check ``resilience_crm.W010`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.cache import caches
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Exists, Field, ForeignKey, Model, OuterRef, Q
from django.dispatch import receiver
from django.utils import timezone
from django_redis import get_redis_connection

import resilience_crm.provider.classify as classify
import resilience_crm.provider.reads as reads
from resilience_crm.breakers import machine
from resilience_crm.conf import cache_is_redis, settings
from resilience_crm.constants import OP_CIRCUITS
from resilience_crm.exceptions import (
    CircuitOpenError,
    DependencyUnavailable,
    IdempotencyConflict,
    IdempotencyInFlight,
    InvalidWrite,
    OperationTimeout,
    QueueUnavailable,
    RetriesExhausted,
)
from resilience_crm.lua import LuaScript
from resilience_crm.models import QueuedWrite
from resilience_crm.signals import circuit_transition

if TYPE_CHECKING:
    from resilience_crm.provider.facade import Provider

logger = logging.getLogger("resilience_crm.provider.queue")

SCRIPT = LuaScript(Path(__file__).with_name("enqueue.lua").read_text(encoding="utf-8"))
#: Failed attempts after which a queued write becomes a dead letter.
MAX_ATTEMPTS = 5
#: Seconds a replayer holds a row it is applying.
LEASE_SECONDS = 30.0
#: Stream entries moved into the database per round trip.
DRAIN_BATCH = 100
#: Errors meaning "the write was not applied and could not be": queue it.
QUEUE_ON = (CircuitOpenError, DependencyUnavailable, OperationTimeout, RetriesExhausted)
STREAM_KEY = "resilience:queue:stream"
MARKER_PREFIX = "resilience:queue:key:"
APPLIED, QUEUED = "applied", "queued"


@dataclass(frozen=True)
class Handler:
    name: str
    fn: Callable[[Any], Any]
    key: str
    circuit: str
    using: str
    model: type[Model] | None = None


@dataclass(frozen=True)
class Receipt:
    """What ``submit`` did: ``status`` is ``"applied"`` (``result`` holds the handler's
    return value) or ``"queued"``."""

    status: str
    idempotency_key: str
    result: Any = None

    @property
    def queued(self) -> bool:
        return self.status == QUEUED


class StillQueued(Exception):  # noqa: N818  (a signal, not an error)
    """The write with this key waits in the queue; submitting it again is the same write."""


_handlers: dict[str, Handler] = {}


def register(name: str, *, key: str = "", circuit: str = OP_CIRCUITS["write"],
             using: str = "default", model: type[Model] | None = None,
             ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    def decorate(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _handlers[name] = Handler(name, fn, key or name, circuit, using, model)
        return fn

    return decorate


def handler(name: str) -> Handler:
    try:
        return _handlers[name]
    except KeyError:
        raise LookupError(f"No write handler is registered as {name!r}; decorate one with "
                          f"@protected.write_handler({name!r}).") from None


def payload_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Validating -------------------------------------------------------------------------------

def validate(name: str, payload: Any, *, idempotency_key: str, entity: str = "") -> None:
    """Raise :class:`InvalidWrite` for a write the database would refuse: a key or entity
    longer than its ``QueuedWrite`` column, a payload that is not JSON, or (when the handler
    names a ``model``) a payload field that is no column of it or a value the column cannot
    hold. No query is made: the answer is the same with the database up or down."""
    found = handler(name)
    problems = row_errors(idempotency_key=idempotency_key, entity=entity)
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as err:
        problems["payload"] = [f"Not JSON: {err}"]
    if found.model is not None and isinstance(payload, dict):
        for field, value in payload.items():
            problems.update(column_errors(found.model, field, value))
    if problems:
        raise InvalidWrite(problems)


def row_errors(*, idempotency_key: str, entity: str) -> dict[str, list[str]]:
    """What is wrong with a write's key and entity as ``QueuedWrite`` columns."""
    problems = {}
    for field, value in (("idempotency_key", idempotency_key), ("entity", entity)):
        problems.update(column_errors(QueuedWrite, field, value))
    return problems


def column_errors(model: type[Model], name: str, value: Any) -> dict[str, list[str]]:
    """``{name: [messages]}`` when ``value`` cannot be stored in ``model``'s field ``name``
    (its attribute name too, ``contact_id``); a foreign key's value is checked against the
    column it points at, never looked up."""
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        field = None
    if not isinstance(field, Field) or not field.concrete or field.many_to_many:
        return {name: [f"{model.__name__} has no column {name!r}."]}
    column = field.target_field if isinstance(field, ForeignKey) else field
    if value is None and field.null:
        return {}
    try:
        column.clean(value, None)
    except ValidationError as err:
        return {name: list(err.messages)}
    return {}


# Submitting --------------------------------------------------------------------------------

def submit(provider: Provider, name: str, payload: Any, *, idempotency_key: str,
           entity: str = "") -> Receipt:
    if not idempotency_key:
        raise ValueError("submit needs an idempotency_key")
    validate(name, payload, idempotency_key=idempotency_key, entity=entity)
    found = handler(name)
    digest = payload_hash(payload)
    queued_hash = _queued_hash(idempotency_key)
    if queued_hash is not None:
        if queued_hash != digest:
            raise IdempotencyConflict()
        return Receipt(QUEUED, idempotency_key)  # the same write, still waiting in Redis
    try:
        result = provider.write(
            found.key, lambda: _apply_now(found, payload, digest, idempotency_key, entity),
            circuit=found.circuit, using=found.using)
    except StillQueued:
        return Receipt(QUEUED, idempotency_key)
    except QUEUE_ON as err:
        if not redis_available():
            raise QueueUnavailable(retry_after=err.retry_after, circuit=found.circuit) from err
        return enqueue(name, payload, idempotency_key=idempotency_key, entity=entity,
                       digest=digest)
    return Receipt(APPLIED, idempotency_key, result)


def _apply_now(found: Handler, payload: Any, digest: str, key: str, entity: str) -> Any:
    try:
        with transaction.atomic(using=found.using):
            row = QueuedWrite.objects.using(found.using).create(
                name=found.name, idempotency_key=key, payload=payload, payload_hash=digest,
                entity=entity, state=QueuedWrite.State.APPLYING, attempts=1)
    except IntegrityError:
        existing = QueuedWrite.objects.using(found.using).get(idempotency_key=key)
        if existing.payload_hash != digest:
            raise IdempotencyConflict() from None
        if existing.state == QueuedWrite.State.APPLIED:
            return existing.result
        if existing.state == QueuedWrite.State.PENDING:
            raise StillQueued() from None
        raise IdempotencyInFlight() from None  # being applied, or failed: see the admin
    result = found.fn(payload)
    row.state, row.result, row.applied_at = QueuedWrite.State.APPLIED, result, timezone.now()
    row.save(update_fields=["state", "result", "applied_at", "updated_at"])
    return result


def enqueue(name: str, payload: Any, *, idempotency_key: str, entity: str = "",
            digest: str | None = None) -> Receipt:
    """Append the write to the Redis stream (raises :class:`QueueUnavailable` when Redis
    cannot take it, :class:`InvalidWrite` when the database would refuse the write). The same
    key again with the same payload is the same queued write."""
    validate(name, payload, idempotency_key=idempotency_key, entity=entity)
    digest = digest or payload_hash(payload)
    body = json.dumps(payload)
    try:
        client, cache = _redis()
        previous = SCRIPT(
            client,
            [cache.make_key(MARKER_PREFIX + idempotency_key), cache.make_key(STREAM_KEY)],
            [digest, name, idempotency_key, body, entity],
        )
    except Exception as err:  # noqa: BLE001  (every redis-py failure means "not queued")
        raise QueueUnavailable() from err
    if previous is not None and _text(previous) != digest:
        raise IdempotencyConflict()
    return Receipt(QUEUED, idempotency_key)


def redis_available() -> bool:
    return cache_is_redis(settings.CACHE_ALIAS)


def _redis() -> tuple[Any, Any]:
    return get_redis_connection(settings.CACHE_ALIAS), caches[settings.CACHE_ALIAS]


def _queued_hash(key: str) -> str | None:
    """The payload hash of a write with ``key`` still waiting in the stream, if any."""
    if not redis_available():
        return None
    try:
        client, cache = _redis()
        value = client.get(cache.make_key(MARKER_PREFIX + key))
    except Exception:  # noqa: BLE001  (Redis down: the database decides)
        return None
    return None if value is None else _text(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# Replaying --------------------------------------------------------------------------------

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
    for db in databases():
        tried: set[int] = set()
        while limit is None or report.applied + report.failed < limit:
            row = claim(owner, lease, skip=tried, using=db)
            if row is None:
                break
            tried.add(row.pk)
            outcome = apply(row, owner)
            if outcome == "stop":
                report.stopped = "the database failed; the rest waits for the next replay"
                return report
            setattr(report, outcome, getattr(report, outcome) + 1)
            if outcome == "dead":
                report.failed += 1
    return report


def databases() -> list[str]:
    """The aliases queued writes live on: each handler's own (its effect and its
    ``QueuedWrite`` row commit in one transaction), and where the router puts the model."""
    return sorted({handler.using for handler in _handlers.values()}
                  | {router.db_for_write(QueuedWrite) or "default"})


def _database_of(name: str) -> str:
    found = _handlers.get(name)
    return found.using if found else (router.db_for_write(QueuedWrite) or "default")


def drain() -> int:
    """Move every write in the Redis stream into a ``QueuedWrite`` row (idempotent: a key
    already in the table is not added twice); returns how many were moved. An entry the
    table cannot hold (queued before ``validate`` refused such writes) becomes a dead letter
    rather than stopping the drain; a database that fails stops it, the entry kept."""
    if not redis_available():
        return 0
    moved = 0
    try:
        client, cache = _redis()
        stream = cache.make_key(STREAM_KEY)
        while True:
            entries = client.xrange(stream, count=DRAIN_BATCH)
            if not entries:
                return moved
            for entry_id, fields in entries:
                data = {_text(k): _text(v) for k, v in fields.items()}
                try:
                    _store_row(data)
                except Exception as err:
                    if not classify.is_permanent(err):
                        raise
                    _store_dead_letter(_text(entry_id), data, err)
                client.xdel(stream, entry_id)
                client.delete(cache.make_key(MARKER_PREFIX + data.get("key", "")))
                moved += 1
    except QueueUnavailable:
        raise
    except Exception as err:
        if classify.classify(err).dependency and not _is_database_error(err):
            raise QueueUnavailable() from err
        raise


def _store_row(data: dict[str, str]) -> None:
    problems = row_errors(idempotency_key=data["key"], entity=data.get("entity", ""))
    if problems:
        raise InvalidWrite(problems)
    db = _database_of(data["name"])
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
    if row_errors(idempotency_key=key, entity=""):
        key = f"invalid-entry:{entry_id}"
    try:
        payload = json.loads(data.get("payload", "null"))
    except ValueError:
        payload = data.get("payload")
    error = f"{err.__class__.__name__}: {err} (idempotency key {data.get('key', '')!r}, " \
            f"entity {data.get('entity', '')!r})"
    logger.error("Write queue: the queued write %s cannot be stored, kept as a dead letter: %s",
                 key, error)
    db = _database_of(data.get("name", ""))
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


UNFINISHED = (QueuedWrite.State.PENDING, QueuedWrite.State.APPLYING, QueuedWrite.State.FAILED)


def apply(row: QueuedWrite, owner: str) -> str:
    """Apply one leased row; ``"applied"``, ``"failed"``, ``"dead"``, or ``"stop"`` when the
    database itself failed (the row keeps its lease and is taken over later)."""
    db = row._state.db or "default"
    try:
        found = handler(row.name)
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
    ``reads.LOCAL_TTL``)."""
    reads.ReadCache().invalidate(reads.space_of(key))


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseError)


# Automatic replay when the write circuit closes ------------------------------------------

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


@receiver(circuit_transition, dispatch_uid="resilience_crm.provider.queue.replay_on_close")
def replay_on_close(sender: Any, name: str, to_state: str, local: bool = False,
                    **kwargs: Any) -> None:
    """A write circuit that closes again means the database is back: replay the queue."""
    if to_state == machine.CLOSED and any(h.circuit == name for h in _handlers.values()):
        replay_in_background()


def stream_length() -> int:
    if not redis_available():
        return 0
    try:
        client, cache = _redis()
        return int(client.xlen(cache.make_key(STREAM_KEY)))
    except Exception:  # noqa: BLE001
        return -1


#: Seconds a process trusts what it last read of Redis's configuration: readiness probes
#: ask on every probe, and the answer changes only when an operator reconfigures.
REDIS_CONFIG_TTL = 60.0
#: The Redis settings the write queue depends on.
REDIS_CONFIG_KEYS = ("appendonly", "save", "maxmemory-policy")
#: ``maxmemory-policy`` values that never evict the stream, which has no TTL.
NON_EVICTING_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random",
                         "volatile-ttl")

_redis_config: dict[str, tuple[float, dict[str, str]]] = {}  # cache alias -> (read at, config)


def redis_config() -> dict[str, str] | None:
    """The Redis settings in ``REDIS_CONFIG_KEYS``, read with ``CONFIG GET`` and kept for
    ``REDIS_CONFIG_TTL`` seconds; ``None`` when they cannot be read (no Redis, ``CONFIG``
    disabled, as managed Redis often does, or Redis unreachable: the next call asks again)."""
    if not redis_available():
        return None
    alias = settings.CACHE_ALIAS
    known = _redis_config.get(alias)
    if known is not None and time.monotonic() - known[0] < REDIS_CONFIG_TTL:
        return known[1]
    try:
        client, _ = _redis()
        config: dict[str, str] = {}
        for name in REDIS_CONFIG_KEYS:
            config.update({_text(k): _text(v) for k, v in client.config_get(name).items()})
    except Exception:  # noqa: BLE001  (unknown: neither a problem nor a clean bill)
        return None
    _redis_config[alias] = (time.monotonic(), config)
    return config


def forget_redis_config() -> None:
    """Read Redis's settings afresh on the next call (after an operator changed them)."""
    _redis_config.clear()


def persistence_problem() -> str | None:
    """Why queued writes would not survive a Redis restart, or ``None`` when they would (or
    it cannot be told)."""
    config = redis_config()
    if config is None:
        return None
    appendonly, save = config.get("appendonly", ""), config.get("save", "")
    if appendonly == "no" and not save.strip():
        return "Redis persistence is off (appendonly no, save \"\")"
    return None


def eviction_problem() -> str | None:
    """Why Redis could evict the queue's stream (it has no TTL) when it reaches
    ``maxmemory``, or ``None`` when it could not (or it cannot be told)."""
    config = redis_config()
    policy = None if config is None else config.get("maxmemory-policy")
    if policy is None or policy in NON_EVICTING_POLICIES:
        return None
    return f"Redis evicts any key when full (maxmemory-policy {policy})"
