"""Drills: an outage made on purpose says it is one.

A drill (the demo's ``resilience_drill``, or a project's own game day) calls :func:`begin`
before it breaks something and :func:`end` after. While it runs, every process that shares
the cache sees it: the transitions recorded meanwhile carry ``[drill <id>]`` in their reason
(:func:`tag`), the Sentry alerts a ``drill`` tag, and the alert rules
(:mod:`resilience_crm.observability.rules`) page for nothing whose look-back overlaps a
drill, unless the drill was begun with ``page=True``. Windows of ended drills are kept for
:data:`KEEP` seconds, long enough for any rule's look-back to pass them.

The record lives in the shared cache (``CACHE_ALIAS``). Reading it never raises: a cache
that does not answer means no drill.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from resilience_crm.conf import settings

logger = logging.getLogger("resilience_crm.observability.drills")

ACTIVE_KEY = "resilience:drill:active"
WINDOWS_KEY = "resilience:drill:windows"
#: Seconds an ended drill's window is remembered (a day: past any rule's look-back).
KEEP = 24 * 3600
#: Seconds a begun drill counts as running if it never calls :func:`end` (it crashed).
LONGEST = 3600
#: How many ended drills are remembered.
KEEP_COUNT = 50


def begin(run_id: str, *, page: bool = False, now: datetime | None = None) -> None:
    """Mark drill ``run_id`` as running from ``now``; ``page=True`` lets the rules page."""
    record = {"run": run_id[:40], "page": bool(page),
              "start": (now or timezone.now()).isoformat()}
    _cache().set(ACTIVE_KEY, record, LONGEST)


def end(run_id: str, *, now: datetime | None = None) -> None:
    """Drill ``run_id`` is over: its window is remembered for :data:`KEEP` seconds."""
    cache = _cache()
    active = cache.get(ACTIVE_KEY)
    if not active or active.get("run") != run_id[:40]:
        return
    window = {**active, "end": (now or timezone.now()).isoformat()}
    cache.set(WINDOWS_KEY, [*_windows(cache), window][-KEEP_COUNT:], KEEP)
    cache.delete(ACTIVE_KEY)


def current() -> dict[str, Any] | None:
    """The running drill (``run``, ``page``, ``start``), or ``None``; never raises."""
    try:
        active = _cache().get(ACTIVE_KEY)
    except Exception:  # no cache, no drill: the alert goes out as usual
        logger.warning("Could not read whether a drill is running.", exc_info=True)
        return None
    return active if isinstance(active, dict) else None


def tag(reason: str) -> str:
    """``reason`` marked with the running drill, if one runs."""
    active = current()
    if active is None:
        return reason
    return f"{reason} [drill {active['run']}]"


def silenced(since: datetime, now: datetime | None = None) -> bool:
    """Whether a drill that does not page ran at any moment between ``since`` and ``now``;
    never raises (``False`` when the cache does not answer)."""
    now = now or timezone.now()
    try:
        cache = _cache()
        spans = list(_windows(cache))
        active = cache.get(ACTIVE_KEY)
    except Exception:
        logger.warning("Could not read the drills' windows.", exc_info=True)
        return False
    if isinstance(active, dict):
        spans.append({**active, "end": (now + timedelta(seconds=1)).isoformat()})
    for span in spans:
        start, end_ = parse_datetime(span.get("start", "")), parse_datetime(span.get("end", ""))
        if start is None or end_ is None or span.get("page"):
            continue
        if start <= now and end_ >= since:
            return True
    return False


def _windows(cache: Any) -> list[dict[str, Any]]:
    found = cache.get(WINDOWS_KEY)
    return [w for w in found if isinstance(w, dict)] if isinstance(found, list) else []


def _cache() -> Any:
    return caches[settings.CACHE_ALIAS]
