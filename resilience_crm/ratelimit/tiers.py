"""Tier limits and tier assignments, cached in each process.

The ``Tier`` rows (created from ``TIERS`` and editable in the admin) are read all at once; a
user's ``TierAssignment`` when the user is first seen. Saving or deleting either (the admin
does) bumps a version stamp in the cache ``CACHE_ALIAS`` names, once the transaction commits.
Each process reads that stamp at most every ``TIER_CACHE_TTL`` seconds and, when it changed,
forgets what it cached: an edit reaches every worker within ``TIER_CACHE_TTL`` (0.5 s by
default) and at once in the process that saved it, while a request costs no query at all.
Entries are reread after ``MAX_AGE`` regardless.

Where the stamp cannot be shared (a per-process cache) or read (the cache is down), entries
live ``TIER_CACHE_TTL`` seconds instead. While the database is unreachable the last rows read
are kept, and without any, ``TIERS`` from settings serves. A ``QuerySet.update()`` sends no
signal: call :func:`changed` after one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.db import DatabaseError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from resilience_crm.conf import cache_backend, settings
from resilience_crm.models import Tier, TierAssignment

logger = logging.getLogger("resilience_crm.ratelimit.tiers")

#: The cache key of the version stamp (through the cache's ``make_key``).
VERSION_KEY = "resilience:tiers:version"
#: Seconds after which a cached entry is reread even if the stamp never changed.
MAX_AGE = 300.0
#: Past this many cached users, the cache starts again empty.
MAX_CACHED_USERS = 50_000
#: Cache backends that keep their data inside one process: no stamp to share.
PER_PROCESS_BACKENDS = ("LocMemCache", "DummyCache")

#: The clock the caches expire by; tests replace it.
clock: Callable[[], float] = time.monotonic

_lock = threading.Lock()
_tiers: tuple[float, dict[str, dict[str, Any]]] | None = None
_users: dict[Any, tuple[float, str | None, dict[str, Any]]] = {}
_stamp: Any = None
_trust_stamp = False  # entries stay valid until the stamp changes
_valid_after = 0.0  # entries loaded before this are stale
_next_check = 0.0


def tier_limits(name: str) -> dict[str, Any]:
    """``{op_class: rate or [rates]}`` of the tier ``name``; ``{}`` for a tier that does not
    exist (then the tier limits nothing)."""
    return _all_tiers().get(name, {})


def assignment(user_id: Any) -> tuple[str | None, dict[str, Any]]:
    """``(tier name or None, per-user limits)`` from the user's ``TierAssignment``."""
    now = clock()
    _sync(now)
    cached = _users.get(user_id)
    if cached is not None and _valid(cached[0], now):
        return cached[1], cached[2]
    try:
        row = (TierAssignment.objects.filter(user_id=user_id)
               .values_list("tier__name", "limits").first())
    except DatabaseError as err:
        logger.warning("Could not read the tier of user %s (%s).", user_id, err)
        return (cached[1], cached[2]) if cached else (None, {})
    tier, limits = (row[0], row[1] if isinstance(row[1], dict) else {}) if row else (None, {})
    with _lock:
        if len(_users) >= MAX_CACHED_USERS:
            _users.clear()
        _users[user_id] = (now, tier, limits)
    return tier, limits


def changed() -> None:
    """Tell every process that tiers or assignments changed (the signals do this on save)."""
    clear()
    try:
        caches[settings.CACHE_ALIAS].set(VERSION_KEY, uuid.uuid4().hex, timeout=None)
    except Exception as err:  # noqa: BLE001  (other workers then catch up by TIER_CACHE_TTL)
        logger.warning("Could not announce a tier change (%s); other workers see it once"
                       " their cached tiers expire.", err)


def clear() -> None:
    """Forget every cached tier and assignment in this process."""
    global _tiers, _stamp, _trust_stamp, _next_check
    with _lock:
        _tiers = None
        _users.clear()
        _stamp, _trust_stamp, _next_check = None, False, 0.0


def _valid(loaded_at: float, now: float) -> bool:
    age = now - loaded_at
    if age < settings.TIER_CACHE_TTL:
        return True
    return _trust_stamp and loaded_at >= _valid_after and age < MAX_AGE


def _sync(now: float) -> None:
    """Read the version stamp at most every ``TIER_CACHE_TTL``; a new one invalidates all."""
    global _stamp, _trust_stamp, _valid_after, _next_check
    if now < _next_check:
        return
    alias = settings.CACHE_ALIAS
    if cache_backend(alias).endswith(PER_PROCESS_BACKENDS):
        _trust_stamp, _next_check = False, now + MAX_AGE
        return
    try:
        stamp = caches[alias].get(VERSION_KEY)
    except Exception as err:  # noqa: BLE001  (a cache outage must not fail requests)
        logger.warning("Could not read the tier version (%s); caching tiers for %ss only.",
                       err, settings.TIER_CACHE_TTL)
        _trust_stamp, _next_check = False, now + settings.STORE_RETRY_INTERVAL
        return
    with _lock:
        if stamp != _stamp or not _trust_stamp:
            _stamp, _valid_after = stamp, now
        _trust_stamp, _next_check = True, now + settings.TIER_CACHE_TTL


def _all_tiers() -> dict[str, dict[str, Any]]:
    global _tiers
    now = clock()
    _sync(now)
    cached = _tiers
    if cached is not None and _valid(cached[0], now):
        return cached[1]
    configured = settings.TIERS if isinstance(settings.TIERS, dict) else {}
    try:
        rows = dict(Tier.objects.values_list("name", "limits"))
    except DatabaseError as err:
        logger.warning("Could not read the rate-limit tiers (%s); using the last ones read.",
                       err)
        rows = cached[1] if cached else {}
    tiers = {name: limits for name, limits in configured.items() if isinstance(limits, dict)}
    tiers.update({name: limits for name, limits in rows.items() if isinstance(limits, dict)})
    with _lock:
        _tiers = (now, tiers)
    return tiers


@receiver(post_save, sender=Tier, dispatch_uid="resilience_crm.tiers.tier_saved")
@receiver(post_delete, sender=Tier, dispatch_uid="resilience_crm.tiers.tier_deleted")
@receiver(post_save, sender=TierAssignment, dispatch_uid="resilience_crm.tiers.assigned")
@receiver(post_delete, sender=TierAssignment, dispatch_uid="resilience_crm.tiers.unassigned")
def _saved(sender: Any, using: str | None = None, **kwargs: Any) -> None:
    transaction.on_commit(changed, using=using)
