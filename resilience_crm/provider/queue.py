"""Writes that outlive a database outage: applied now, or queued outside the database and
replayed exactly once when it is back.

``submit`` applies a registered handler (``handlers.py``) in one transaction with a
``QueuedWrite`` row that holds the idempotency key (unique), its payload hash and the
handler's result. While the write circuit is open or the database cannot be reached, the
write goes to a Redis stream instead (``stream.py``), and :func:`replay` (``replay.py``)
applies it later, exactly once. ``validate`` refuses, before anything is applied or queued,
what the database would refuse: a key or entity longer than its column, a payload its
handler's model cannot hold.

Without Redis (the embedded default) there is nowhere outside the database to put a write:
``submit`` then raises :class:`~resilience_crm.exceptions.QueueUnavailable` (HTTP 503) while
the database is unreachable, and check ``resilience_crm.W010`` says so.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from django.db import connections
from django.db.models import Field
from django.utils import timezone

import resilience_crm.provider.handlers as handlers
import resilience_crm.provider.stream as stream
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
from resilience_crm.models import QueuedWrite
from resilience_crm.provider.replay import replay  # noqa: F401  (``queue.replay()``, as before)


class Provider(Protocol):
    """What ``submit`` needs of the provider that calls it: a protected write, and a lookup
    (the facade's ``Provider.write`` and ``Provider.lookup``). A protocol, so the queue does
    not import the facade that imports it."""

    def write(self, key: str, fn: Callable[[], Any], *, circuit: str, using: str | None,
              then: Callable[[Any], object] | None = None) -> Any: ...

    def lookup(self, key: str, fn: Callable[[], Any], *, circuit: str,
               using: str | None) -> Any: ...

#: Errors meaning "the write was not applied and could not be": queue it.
QUEUE_ON = (CircuitOpenError, DependencyUnavailable, OperationTimeout, RetriesExhausted)
APPLIED, QUEUED = "applied", "queued"


@dataclass(frozen=True)
class Receipt:
    """What ``submit`` did: ``status`` is ``"applied"`` (``result`` holds the handler's
    return value) or ``"queued"``; ``replayed`` when an earlier submit with this key did it
    and this one only gives its answer back (an API marks it ``Idempotent-Replayed: true``)."""

    status: str
    idempotency_key: str
    result: Any = None
    replayed: bool = False

    @property
    def queued(self) -> bool:
        return self.status == QUEUED


def payload_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate(name: str, payload: Any, *, idempotency_key: str, entity: str = "") -> None:
    """Raise :class:`InvalidWrite` for a write the database would refuse: a key or entity
    longer than its ``QueuedWrite`` column, a payload that is not JSON, or (when the handler
    names a ``model``) a payload field that is no column of it or a value the column cannot
    hold. No query is made: the answer is the same with the database up or down."""
    found = handlers.handler(name)
    problems = handlers.row_errors(idempotency_key=idempotency_key, entity=entity)
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as err:
        problems["payload"] = [f"Not JSON: {err}"]
    if found.model is not None and isinstance(payload, dict):
        for field, value in payload.items():
            problems.update(handlers.column_errors(found.model, field, value))
    if problems:
        raise InvalidWrite(problems)


def submit(provider: Provider, name: str, payload: Any, *, idempotency_key: str,
           entity: str = "") -> Receipt:
    if not idempotency_key:
        raise ValueError("submit needs an idempotency_key")
    validate(name, payload, idempotency_key=idempotency_key, entity=entity)
    found = handlers.handler(name)
    digest = payload_hash(payload)
    queued_hash = stream.queued_hash(idempotency_key)
    if queued_hash is not None:
        if queued_hash != digest:
            raise IdempotencyConflict()
        return Receipt(QUEUED, idempotency_key, replayed=True)  # the same, waiting in Redis
    try:
        result = provider.write(
            found.key, partial(found.fn, payload), circuit=found.circuit, using=found.using,
            then=partial(_record, found, payload, digest, idempotency_key, entity))
    except QUEUE_ON as err:
        if not stream.available():
            raise QueueUnavailable(retry_after=err.retry_after, circuit=found.circuit) from err
        return enqueue(name, payload, idempotency_key=idempotency_key, entity=entity,
                       digest=digest)
    except Exception:
        # Perhaps because a write with this key was applied already, or was being applied:
        # by the duplicate this one waited for on the key's row, which then refused this
        # one's row and so rolled its effect back; or earlier, and then the handler itself
        # may have refused it again (a name taken: by the write itself).
        receipt = _recorded(provider, found, idempotency_key, digest)
        if receipt is None:
            raise
        return receipt
    return Receipt(APPLIED, idempotency_key, result)


def _record(found: handlers.Handler, payload: Any, digest: str, key: str, entity: str,
            result: Any) -> None:
    """The write's ``QueuedWrite`` row, in its final state, last in the write's transaction
    (its ``COMMIT`` goes with it): the key is unique, so a duplicate applied meanwhile makes
    this insert fail and the whole write roll back.

    One ``INSERT`` built once per database from the model's fields, each value adapted by its
    own field as ``create()`` adapts it, without the model instance, the SQL compiler and the
    ``RETURNING`` (nothing reads the row's id here): about a third of a millisecond less per
    write (docs/benchmarks.md, "Where a create's time goes"). So the row sends no
    ``pre_save`` / ``post_save``; rows of queued writes (``replay.py``) are saved by the ORM."""
    now = timezone.now()
    row = {"name": found.name, "idempotency_key": key, "payload": payload,
           "payload_hash": digest, "state": QueuedWrite.State.APPLIED, "attempts": 1,
           "updated_at": now, "applied_at": now, "entity": entity, "result": result}
    connection = connections[found.using]
    sql, fields = _insert_sql(connection.alias, connection.vendor)
    with connection.cursor() as cursor:  # the rest as the model's defaults have them
        cursor.execute(sql, [field.get_db_prep_save(
            row[field.name] if field.name in row else field.get_default(), connection)
            for field in fields])


@functools.cache
def _insert_sql(alias: str, vendor: str) -> tuple[str, tuple[Field[Any, Any], ...]]:
    """The ``INSERT`` of a ``QueuedWrite`` row on database ``alias`` (every column but the
    id and ``created_at``, which the database fills), and its fields in order."""
    fields = tuple(field for field in QueuedWrite._meta.concrete_fields
                   if field.name not in ("id", "created_at"))
    quote = connections[alias].ops.quote_name
    # Identifiers from the model, quoted by the backend; every value is a parameter.
    sql = (f"INSERT INTO {quote(QueuedWrite._meta.db_table)}"  # noqa: S608
           f" ({', '.join(quote(str(field.column)) for field in fields)})"
           f" VALUES ({', '.join(['%s'] * len(fields))})")
    return sql, fields


def _recorded(provider: Provider, found: handlers.Handler, key: str,
              digest: str) -> Receipt | None:
    """What became of the write with ``key`` by its row: ``None`` when it has none, or when
    the row cannot be read now (the caller's error then stands)."""
    def lookup() -> tuple[str, str, Any] | None:
        return (QueuedWrite.objects.using(found.using).filter(idempotency_key=key)
                .values_list("payload_hash", "state", "result").first())

    try:
        row = provider.lookup(found.key, lookup, circuit=found.circuit, using=found.using)
    except QUEUE_ON:
        return None
    if row is None:
        return None
    payload_hash, state, result = row
    if payload_hash != digest:
        raise IdempotencyConflict()
    if state == QueuedWrite.State.APPLIED:
        return Receipt(APPLIED, key, result, replayed=True)
    if state == QueuedWrite.State.PENDING:
        return Receipt(QUEUED, key, replayed=True)  # the same write, waiting in the table
    raise IdempotencyInFlight()  # being applied, or failed: see the admin


def enqueue(name: str, payload: Any, *, idempotency_key: str, entity: str = "",
            digest: str | None = None) -> Receipt:
    """Append the write to the Redis stream (raises :class:`QueueUnavailable` when Redis
    cannot take it, :class:`InvalidWrite` when the database would refuse the write). The same
    key again with the same payload is the same queued write."""
    validate(name, payload, idempotency_key=idempotency_key, entity=entity)
    digest = digest or payload_hash(payload)
    previous = stream.append(name, json.dumps(payload), idempotency_key=idempotency_key,
                             entity=entity, digest=digest)
    if previous is not None and previous != digest:
        raise IdempotencyConflict()
    return Receipt(QUEUED, idempotency_key, replayed=previous is not None)
