"""Health endpoints.

``live`` answers without touching anything. ``ready`` probes the database and the cache and
reads every circuit's state (without stepping it: a probe writes nothing anywhere), all at
once and under one overall deadline, :data:`PROBE_DEADLINE`. Each probe runs on a daemon
thread of its own, at most one of each kind at a time, so a stalled database or Redis holds
one thread (never the request, nor the process's exit): a probe that has not answered by
the deadline counts as failed, and the next request waits on the same one.

Anonymous callers get ``status``, ``score`` and ``circuits``; staff (when the database
answers, so their session can be read) and callers with the configured
``MONITORING_TOKEN`` also get ``queue`` and ``checks`` (error names, latencies).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings as django_settings
from django.core.cache import caches
from django.db import DatabaseError, connections, router, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from resilience_crm import metrics
from resilience_crm.breakers import machine, registry
from resilience_crm.conf import settings
from resilience_crm.models import Circuit, QueuedWrite
from resilience_crm.observability import exposition
from resilience_crm.provider import probe as queue_probe

logger = logging.getLogger("resilience_crm.health")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Seconds a readiness probe may take, all probes together.
PROBE_DEADLINE = 0.7
#: The most each unhealthy part takes off the readiness score. The first four are per
#: occurrence; the rest grow with the measure up to the figure in :data:`FULL_PENALTY_AT`.
PENALTIES = {
    "database": 50, "cache": 20, "open_circuit": 10, "local_store": 10,
    "failure_rate": 10,  # per circuit, by its failure rate since the last probe
    "rate_limited": 10,  # by the share of rate-limit decisions rejected since the last probe
    "queue_depth": 5,  # by the writes waiting to be replayed
    "queue_age": 10,  # by how long the oldest of them has waited, in seconds
    "dead_letters": 5,  # any dead letter
}
#: Where a graded penalty reaches its full size.
FULL_PENALTY_AT = {"failure_rate": 0.5, "rate_limited": 0.5, "queue_depth": 100,
                   "queue_age": 300}
#: Calls a circuit must have made since the last probe for its failure rate to count.
MIN_CALLS = 10

_lock = threading.Lock()
_running: dict[str, Future[Any]] = {}
_seen: dict[tuple[Any, ...], int] = {}  # counters at the previous probe, for rates since then


def non_atomic_everywhere(view: Any) -> Any:
    """Exempt ``view`` from ``ATOMIC_REQUESTS`` on every database in ``DATABASES``: opening a
    request's transaction connects first, and a view that must not wait on a database must
    not open one (Django's ``non_atomic_requests`` exempts one alias at a time)."""
    for alias in django_settings.DATABASES:
        view = transaction.non_atomic_requests(using=alias)(view)
    return view


@never_cache
@require_GET
@non_atomic_everywhere
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
@non_atomic_everywhere  # ATOMIC_REQUESTS would connect to the database first
def ready(request: HttpRequest) -> JsonResponse:
    deadline = time.monotonic() + PROBE_DEADLINE
    probes = {kind: _probe(kind, probe) for kind, probe in PROBES.items()}
    results = {kind: _wait(future, deadline) for kind, future in probes.items()}
    checks = {"database": results["database"], "cache": results["cache"]}
    circuits = results["circuits"].get("circuits") or {
        name: {"state": "unknown"} for name in settings.circuit_names()}

    rates = _rates_since_last_probe()
    checks["traffic"] = rates
    score = 100.0
    for name, circuit in circuits.items():
        if circuit.get("store") == "local":
            score -= PENALTIES["local_store"]
        if circuit["state"] in (*machine.REJECTING, "unknown"):
            score -= PENALTIES["open_circuit"]
        else:
            score -= _graded("failure_rate", rates["failure_rate"].get(name, 0.0))
    score -= _graded("rate_limited", rates["rate_limited"])
    for part in ("database", "cache"):
        if not checks[part]["ok"]:
            score -= PENALTIES[part]
    queue = checks["database"].get("queue") or {}
    if queue:  # writes still waiting in Redis for the database to come back (-1: unknown)
        queue["in_redis"] = checks["cache"].pop("in_redis", 0)
    score -= _graded("queue_depth", queue.get("pending", 0) + max(0, queue.get("in_redis", 0)))
    score -= _graded("queue_age", queue.get("oldest_pending_s", 0))
    if queue.get("dead"):
        score -= PENALTIES["dead_letters"]
    score = max(0, round(score))
    database_ok = checks["database"]["ok"]
    status = "ok" if score == 100 else ("degraded" if database_ok else "unavailable")
    body: dict[str, Any] = {"status": status, "score": score, "circuits": circuits}
    if checks["cache"].get("warnings"):  # an operator must see them, staff or not
        body["warnings"] = checks["cache"]["warnings"]
    if _may_see_details(request, database_ok):
        body["queue"] = checks["database"].pop("queue", None)
        body["checks"] = checks
    return JsonResponse(body, status=503 if status == "unavailable" else 200)


@never_cache
@require_GET
@non_atomic_everywhere
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The cluster's counters and gauges in OpenMetrics text, for staff sessions or callers
    with the ``MONITORING_TOKEN``."""
    if not _may_see_details(request, database_ok=True):
        response = HttpResponse("Staff session or bearer token required.\n", status=401,
                                content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="resilience metrics"'
        return response
    return HttpResponse(exposition.render(), content_type=OPENMETRICS)


def _graded(part: str, measure: float) -> float:
    """``part``'s penalty for ``measure``: none at 0, the whole of it at FULL_PENALTY_AT."""
    return PENALTIES[part] * min(1.0, max(0.0, measure) / FULL_PENALTY_AT[part])


def _rates_since_last_probe() -> dict[str, Any]:
    """Each circuit's failure rate and the share of rejected rate-limit decisions in this
    process since its previous readiness probe (or since it started)."""
    calls: dict[str, int] = {}
    failed: dict[str, int] = {}
    decided = rejected = 0
    with _lock:
        for name, labels, value in metrics.collect():
            key = (name, *sorted(labels.items()))
            before = _seen.get(key, 0)
            delta, _seen[key] = value - before if value >= before else value, value
            # A timeout is also counted as a failure: it is not a call of its own.
            if name == "calls" and labels.get("outcome") in machine.OUTCOMES:
                circuit = labels["circuit"]
                calls[circuit] = calls.get(circuit, 0) + delta
                if labels["outcome"] == machine.FAILURE:
                    failed[circuit] = failed.get(circuit, 0) + delta
            elif name == "ratelimit_decisions":
                decided += delta
                if labels.get("decision", "").endswith("rejected") and not labels.get(
                        "decision", "").startswith("shadow"):
                    rejected += delta
    return {
        "failure_rate": {circuit: round(failed.get(circuit, 0) / n, 4)
                         for circuit, n in calls.items() if n >= MIN_CALLS},
        "rate_limited": round(rejected / decided, 4) if decided else 0.0,
    }


def _may_see_details(request: HttpRequest, database_ok: bool) -> bool:
    token = settings.MONITORING_TOKEN
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    if not database_ok:  # the session cannot be read; nobody is known to be staff
        return False
    user = getattr(request, "user", None)
    try:
        return bool(user is not None and user.is_authenticated and user.is_staff)
    except DatabaseError:
        return False


# The probes, each run on the pool's threads.


def _probe_database() -> dict[str, Any]:
    alias = router.db_for_read(Circuit) or "default"
    connection = connections[alias]
    started = time.monotonic()
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL statement_timeout = %s", [int(PROBE_DEADLINE * 1000)])
            cursor.execute("SELECT 1")
        using = router.db_for_read(QueuedWrite)
        counts = QueuedWrite.counts(using)
        oldest = (QueuedWrite.objects.using(using).filter(state=QueuedWrite.State.PENDING)
                  .order_by("created_at").values_list("created_at", flat=True).first())
    except DatabaseError as err:
        logger.warning("Readiness: database %s failed: %s", alias, err)
        return {"ok": False, "error": err.__class__.__name__, "ms": _ms_since(started)}
    finally:
        connection.close()  # this thread's own connection: never left open, or broken
    age = (timezone.now() - oldest).total_seconds() if oldest else 0
    return {"ok": True, "ms": _ms_since(started),
            "queue": {"pending": counts["pending"], "dead": counts["dead"],
                      "oldest_pending_s": round(age, 1)}}


def _probe_cache() -> dict[str, Any]:
    cache = caches[settings.CACHE_ALIAS]
    started = time.monotonic()
    try:
        cache.get("resilience:health")
    except Exception as err:  # every cache backend raises its own errors
        logger.warning("Readiness: cache %s failed: %s", settings.CACHE_ALIAS, err)
        return {"ok": False, "error": err.__class__.__name__, "ms": _ms_since(started)}
    result: dict[str, Any] = {"ok": True, "ms": _ms_since(started),
                              "in_redis": queue_probe.stream_length()}
    warnings = [f"{problem}: {loss}" for problem, loss in (
        (queue_probe.persistence_problem(), "queued writes would not survive a Redis restart."),
        (queue_probe.eviction_problem(), "a full Redis could evict the queued writes."),
    ) if problem]
    if warnings:
        result["warnings"] = warnings
    return result


def _read_circuits() -> dict[str, Any]:
    circuits: dict[str, dict[str, Any]] = {}
    try:
        for name in settings.circuit_names():
            breaker = registry.get_breaker(name)
            try:
                circuits[name] = {"state": breaker.peek()}
            except Exception as err:  # a store that fails to read: said, not raised
                logger.warning("Readiness: circuit %s could not be read: %s", name, err)
                circuits[name] = {"state": "unknown"}
            if breaker.using_fallback or not registry.get_store().available:
                circuits[name]["store"] = "local"
    finally:
        connections.close_all()  # the database store reads through this thread's connection
    return {"circuits": circuits}


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _probe_database, "cache": _probe_cache, "circuits": _read_circuits,
}


def _probe(kind: str, probe: Callable[[], dict[str, Any]]) -> Future[Any]:
    """The running probe of this kind, or a new one: a stalled probe is waited on again,
    never stacked."""
    with _lock:
        future = _running.get(kind)
        if future is None or future.done():
            future = _running[kind] = Future()
            threading.Thread(target=_run, args=(future, probe), daemon=True,
                             name=f"resilience-ready-{kind}").start()
    return future


def _run(future: Future[Any], probe: Callable[[], dict[str, Any]]) -> None:
    try:
        future.set_result(probe())
    except BaseException as err:  # handed to the waiting request, which reports it
        future.set_exception(err)


def _wait(future: Future[Any], deadline: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result: dict[str, Any] = future.result(timeout=max(0.0, deadline - started))
    except FutureTimeout:
        return {"ok": False, "error": "timeout", "ms": _ms_since(started)}
    except Exception as err:  # a probe that raised: reported, never a 500
        logger.exception("Readiness probe failed.")
        return {"ok": False, "error": err.__class__.__name__, "ms": _ms_since(started)}
    return dict(result)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def forget_rates() -> None:
    """Start the rates the score weighs afresh (with :func:`metrics.reset`)."""
    with _lock:
        _seen.clear()


def _forget_probes() -> None:
    """A forked child has none of its parent's threads, nor its counters."""
    global _lock
    _lock = threading.Lock()
    _running.clear()
    _seen.clear()


os.register_at_fork(after_in_child=_forget_probes)
