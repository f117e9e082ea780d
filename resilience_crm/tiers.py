"""Tier limits and tier assignments, cached in each process for ``TIER_CACHE_TTL`` seconds.

The ``Tier`` rows (created from ``TIERS`` and editable in the admin) are read all at once;
a user's ``TierAssignment`` is read per user. Both are forgotten after ``TIER_CACHE_TTL``,
so an edit in the admin reaches every worker within that time (0.5 s by default), and at
once in the process that saved it. While the database is unreachable the last rows read are
kept, and without any, ``TIERS`` from settings serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from resilience_crm.conf import settings
from resilience_crm.constants import SETTING_NAME
from resilience_crm.models import Tier, TierAssignment

logger = logging.getLogger("resilience_crm.tiers")

#: Past this many cached users, the cache starts again empty.
MAX_CACHED_USERS = 50_000

#: The clock the caches expire by; tests replace it.
clock: Callable[[], float] = time.monotonic

_lock = threading.Lock()
_tiers: tuple[float, dict[str, dict[str, Any]]] | None = None
_users: dict[Any, tuple[float, str | None, dict[str, Any]]] = {}


def tier_limits(name: str) -> dict[str, Any]:
    """``{op_class: rate or [rates]}`` of the tier ``name``; ``{}`` for a tier that does not
    exist (then the tier limits nothing)."""
    return _all_tiers().get(name, {})


def assignment(user_id: Any) -> tuple[str | None, dict[str, Any]]:
    """``(tier name or None, per-user limits)`` from the user's ``TierAssignment``."""
    now = clock()
    cached = _users.get(user_id)
    if cached is not None and cached[0] > now:
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
        _users[user_id] = (now + settings.TIER_CACHE_TTL, tier, limits)
    return tier, limits


def clear() -> None:
    """Forget every cached tier and assignment in this process."""
    global _tiers
    with _lock:
        _tiers = None
        _users.clear()


def _all_tiers() -> dict[str, dict[str, Any]]:
    global _tiers
    now = clock()
    cached = _tiers
    if cached is not None and cached[0] > now:
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
        _tiers = (now + settings.TIER_CACHE_TTL, tiers)
    return tiers


@receiver(post_save, sender=Tier, dispatch_uid="resilience_crm.tiers.tier_saved")
@receiver(post_delete, sender=Tier, dispatch_uid="resilience_crm.tiers.tier_deleted")
@receiver(post_save, sender=TierAssignment, dispatch_uid="resilience_crm.tiers.assigned")
@receiver(post_delete, sender=TierAssignment, dispatch_uid="resilience_crm.tiers.unassigned")
def _changed(sender: Any, using: str | None = None, **kwargs: Any) -> None:
    transaction.on_commit(clear, using=using)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "DATABASES"):
        clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="resilience_crm.tiers")
