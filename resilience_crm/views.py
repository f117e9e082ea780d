"""Health endpoints: ``live`` answers without touching anything; ``ready`` probes the database
and the cache under a hard deadline and lists every circuit as this worker sees it."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import caches
from django.db import DatabaseError, connections, router, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from resilience_crm import core, registry
from resilience_crm import queue as write_queue
from resilience_crm.conf import settings

logger = logging.getLogger("resilience_crm.health")

#: Seconds a readiness probe may take.
PROBE_DEADLINE = 1.0
#: What each unhealthy part takes off the readiness score.
PENALTIES = {"database": 50, "cache": 20, "open_circuit": 10, "local_store": 10}


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": _probe_database(), "cache": _probe_cache()}
    circuits: dict[str, dict[str, Any]] = {}
    score = 100
    for breaker in registry.all_breakers():
        state = breaker.state
        circuits[breaker.name] = {"state": state}
        if breaker.using_fallback:
            circuits[breaker.name]["store"] = "local"
            score -= PENALTIES["local_store"]
        if state in (core.OPEN, core.FORCED_OPEN):
            score -= PENALTIES["open_circuit"]
    queue = _queue() if checks["database"]["ok"] else None
    for part in ("database", "cache"):
        if not checks[part]["ok"]:
            score -= PENALTIES[part]
    score = max(0, score)
    status = "ok" if score == 100 else ("degraded" if checks["database"]["ok"] else "unavailable")
    body = {"status": status, "score": score, "circuits": circuits, "queue": queue,
            "checks": checks}
    persistence = write_queue.persistence_problem()
    if persistence:
        body["warnings"] = [f"{persistence}: queued writes would not survive a Redis restart."]
    return JsonResponse(body, status=503 if status == "unavailable" else 200)


def _probe_database() -> dict[str, Any]:
    from resilience_crm.models import Circuit

    alias = router.db_for_read(Circuit) or "default"
    connection = connections[alias]
    started = time.monotonic()
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL statement_timeout = %s", [int(PROBE_DEADLINE * 1000)])
            cursor.execute("SELECT 1")
    except DatabaseError as err:
        logger.warning("Readiness: database %s failed: %s", alias, err)
        return {"ok": False, "error": err.__class__.__name__, "ms": _ms_since(started)}
    return {"ok": True, "ms": _ms_since(started)}


def _probe_cache() -> dict[str, Any]:
    cache = caches[settings.CACHE_ALIAS]
    started = time.monotonic()
    try:
        cache.get("resilience:health")
    except Exception as err:  # every cache backend raises its own errors
        logger.warning("Readiness: cache %s failed: %s", settings.CACHE_ALIAS, err)
        return {"ok": False, "error": err.__class__.__name__, "ms": _ms_since(started)}
    return {"ok": True, "ms": _ms_since(started)}


def _queue() -> dict[str, int] | None:
    from django.db.models import Count

    from resilience_crm.models import QueuedWrite

    try:
        counts = dict(QueuedWrite.objects.values_list("state").annotate(n=Count("pk")))
    except DatabaseError:
        return None
    return {"pending": counts.get("pending", 0), "dead": counts.get("dead", 0)}


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
