"""What the flusher cannot write while the database is down, kept in the shared store.

The background flusher (:mod:`resilience_crm.flusher`) writes transition events and
call
metrics that its process buffered in memory. When a round finds the database unreachable,
and when the process ends, :func:`keep` moves them into a Redis stream per kind: the same
Redis, and so the same durability, as the write queue's stream. There they outlive the
process that saw them, and any process whose flusher finds the database answering writes
them with :func:`drain`.

Each batch goes to the database in one transaction with a ``SpoolReceipt`` row named by the
batch's id (unique), so a batch that two processes drain at once, or that a process wrote
and then died before taking it off the stream, is written exactly once: metric counts are
added once, local events (outside ``CircuitEvent``'s uniqueness) recorded once.

Without Redis (the embedded default) there is no shared store: :func:`keep` raises
:class:`~resilience_crm.exceptions.SpoolUnavailable`, and the records stay in the process's
memory as before.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, DatabaseError, router, transaction
from django_redis import get_redis_connection

from resilience_crm.conf import cache_is_redis, settings
from resilience_crm.exceptions import SpoolUnavailable
from resilience_crm.flusher import UNREACHABLE
from resilience_crm.lua import REDIS_DOWN

logger = logging.getLogger("resilience_crm.spool")

#: Stream key of each kind of record (before the cache's key prefix).
KEY_PREFIX = "resilience:spool:"
#: Batches read from the stream per round trip.
DRAIN_BATCH = 20

#: Writes one batch's records to the database, inside the batch's transaction.
Writer = Callable[[list[dict[str, Any]]], object]


def available() -> bool:
    """Whether there is a shared store to keep records in (``CACHE_ALIAS`` is Redis)."""
    return cache_is_redis(settings.CACHE_ALIAS)


def keep(kind: str, records: list[dict[str, Any]]) -> None:
    """Append ``records`` (JSON-able) as one batch to ``kind``'s stream; raises
    :class:`SpoolUnavailable` when there is no shared store or it fails."""
    if not records:
        return
    if not available():
        raise SpoolUnavailable(f"CACHE_ALIAS {settings.CACHE_ALIAS!r} is not a Redis cache")
    body = json.dumps({"batch": uuid.uuid4().hex, "records": records})
    try:
        client, stream = _stream(kind)
        client.xadd(stream, {"body": body})
    except Exception as err:  # every redis-py failure means "not kept"
        raise SpoolUnavailable(str(err)) from err


def drain(kind: str, write: Writer) -> int:
    """Write every batch waiting in ``kind``'s stream with ``write``, oldest first, each
    exactly once; returns how many records were written. Raises the database's error when
    it cannot be reached (that batch, and those after it, wait); a batch the database
    refuses is logged and dropped. When Redis cannot be read nothing is written (0)."""
    if not available():
        return 0
    written = 0
    try:
        client, stream = _stream(kind)
        while entries := client.xrange(stream, count=DRAIN_BATCH):
            for entry_id, fields in entries:
                body = json.loads(fields[b"body"])
                try:
                    if _write_once(body["batch"], body["records"], write):
                        written += len(body["records"])
                except UNREACHABLE:
                    raise
                except DatabaseError:  # refused for good: must not hold up the ones behind it
                    logger.exception("Dropping a batch of %s from the spool: the database "
                                     "refuses it: %s", kind, body)
                client.xdel(stream, entry_id)
    except REDIS_DOWN as err:
        logger.warning("The spool of %s cannot be read (%s); it waits.", kind, err)
    if written:
        logger.info("Wrote %d %s kept in the shared store while the database was down.",
                    written, kind)
    return written


def length(kind: str) -> int:
    """Batches waiting in ``kind``'s stream (-1 when Redis cannot be asked, 0 without it)."""
    if not available():
        return 0
    try:
        client, stream = _stream(kind)
        return int(client.xlen(stream))
    except Exception:  # noqa: BLE001
        return -1


def _write_once(batch: str, records: list[dict[str, Any]], write: Writer) -> bool:
    # By name: the models import the breaker, whose metrics keep their counts here.
    receipts = apps.get_model("resilience_crm", "SpoolReceipt")
    db = router.db_for_write(receipts) or DEFAULT_DB_ALIAS
    with transaction.atomic(using=db):
        _, created = receipts.objects.using(db).get_or_create(batch=batch)
        if created:
            write(records)
    return created


def _stream(kind: str) -> tuple[Any, str]:
    alias = settings.CACHE_ALIAS
    return get_redis_connection(alias), caches[alias].make_key(KEY_PREFIX + kind)
