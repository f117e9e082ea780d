"""``/resilience/metrics``: the whole cluster's counters in OpenMetrics text.

Every worker counts in memory (:mod:`resilience_crm.metrics`). :func:`push` adds what
this
process counted since its previous push to one Redis hash per family, in one pipelined round
trip; the background flusher runs it with its other writes, and the endpoint runs it for its
own process before it reads. So the endpoint reports the sum over every process, each at most
one flush interval behind, whichever worker answers. Without a django-redis cache there is
nothing to share through: the endpoint then reports this process's own counts, and says so.

Gauges are read when asked: each circuit's state from the shared store (without stepping
it), queued writes from the database. prometheus_client renders the text.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.cache import caches
from django.db import DatabaseError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from resilience_crm import conf, metrics
from resilience_crm.breakers import machine, registry
from resilience_crm.conf import settings
from resilience_crm.models import QueuedWrite
from resilience_crm.provider import probe as queue_probe

logger = logging.getLogger("resilience_crm.observability.exposition")

#: Counter families: our counter name -> (exposed name, labels, help).
COUNTERS = {
    "calls": ("resilience_calls", ("circuit", "outcome"),
              "Calls through a circuit by outcome: success, failure, slow, timeout, rejected, "
              "fallback."),
    "ratelimit_decisions": ("resilience_ratelimit_decisions", ("op_class", "decision"),
                            "Rate-limit decisions by op class and outcome."),
    "ratelimit_tier_decisions": ("resilience_ratelimit_tier_decisions", ("tier", "decision"),
                                 "Rate-limit decisions by the client's tier and outcome."),
    "transitions": ("resilience_transitions", ("circuit", "to_state"),
                    "Circuit transitions announced by this cluster's workers."),
    "store_errors": ("resilience_store_errors", ("circuit",),
                     "Steps the shared breaker store failed, by circuit."),
}

#: The ``state`` of ``resilience_queued_writes`` for writes still in Redis.
IN_REDIS = "in_redis"

_lock = threading.Lock()
_pushed: dict[tuple[Any, ...], int] = {}  # what this process has added to the shared hashes


def shared() -> bool:
    """Whether counts are shared through Redis (the ``CACHE_ALIAS`` cache is django-redis)."""
    return conf.cache_is_redis(settings.CACHE_ALIAS)


def _client() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection(settings.CACHE_ALIAS)


def _hash(family: str) -> str:
    return str(caches[settings.CACHE_ALIAS].make_key(f"resilience:metrics:{family}"))


def _field(labels: dict[str, str], names: Iterable[str]) -> str:
    return "\x1f".join(labels.get(name, "") for name in names)


def push() -> int:
    """Add this process's counts since its previous push to the shared hashes; returns how
    many counters moved. A failure keeps them for the next push."""
    if not shared():
        return 0
    with _lock:
        moved = []
        for name, labels, value in metrics.collect():
            if name not in COUNTERS:
                continue
            ident = (name, *sorted(labels.items()))
            pushed = _pushed.get(ident, 0)
            # Below what was pushed: the counters began again (``metrics.reset()``).
            delta = value - pushed if value >= pushed else value
            if delta > 0:
                moved.append((ident, name, labels, value, delta))
        if not moved:
            return 0
        try:
            pipe = _client().pipeline(transaction=False)
            for _, name, labels, _, delta in moved:
                pipe.hincrby(_hash(name), _field(labels, COUNTERS[name][1]), delta)
            pipe.execute()
        except Exception as err:  # the counts wait here for the next push
            logger.warning("Could not push metrics to Redis (%s); they wait.", err)
            return 0
        for ident, _, _, value, _ in moved:
            _pushed[ident] = value
    return len(moved)


def totals(name: str) -> dict[tuple[str, ...], int]:
    """The cluster's totals of one counter family (this process's own without Redis), by
    its label values in ``COUNTERS`` order."""
    labels = COUNTERS[name][1]
    if shared():
        push()
        raw = _client().hgetall(_hash(name))
        return {tuple((k.decode() if isinstance(k, bytes) else k).split("\x1f")): int(v)
                for k, v in raw.items()}
    found: dict[tuple[str, ...], int] = {}
    for counter, values, count in metrics.collect():
        if counter == name:
            key = tuple(values.get(label, "") for label in labels)
            found[key] = found.get(key, 0) + count
    return found


class ClusterCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._circuit_states()
        yield from self._queued_writes()

    def _counters(self) -> Iterator[Metric]:
        if shared():
            push()
            client = _client()
            pipe = client.pipeline(transaction=False)
            for name in COUNTERS:
                pipe.hgetall(_hash(name))
            tables = dict(zip(COUNTERS, pipe.execute(), strict=True))
            scope = "every worker"
        else:
            tables = {name: {} for name in COUNTERS}
            for name, labels, value in metrics.collect():
                if name in COUNTERS:
                    field = _field(labels, COUNTERS[name][1])
                    tables[name][field] = tables[name].get(field, 0) + value
            scope = "this process only: the cache is not Redis"
        for name, (exposed, label_names, help_text) in COUNTERS.items():
            family = CounterMetricFamily(exposed, f"{help_text} ({scope})",
                                         labels=label_names)
            for field, count in sorted(tables[name].items()):
                text = field.decode() if isinstance(field, bytes) else field
                family.add_metric(text.split("\x1f"), int(count))
            yield family

    def _circuit_states(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("resilience_circuit_state",
                                   "1 for the state each circuit is in.",
                                   labels=("circuit", "state"))
        for name in settings.circuit_names():
            try:
                current = registry.get_breaker(name).peek()
            except Exception:  # a store that cannot be read: no state rather than a 500
                logger.exception("Metrics: circuit %s could not be read.", name)
                current = ""
            for state in machine.STATES:
                family.add_metric((name, state), 1 if state == current else 0)
        yield family

    def _queued_writes(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "resilience_queued_writes",
            "Queued writes by state; in_redis: still in the Redis stream, not yet in the "
            "database.", labels=("state",))
        in_redis = queue_probe.stream_length()
        if in_redis >= 0:
            family.add_metric((IN_REDIS,), in_redis)
        try:
            counts = QueuedWrite.counts()
        except DatabaseError as err:
            logger.warning("Metrics: queued writes could not be counted (%s).", err)
        else:
            for state in QueuedWrite.State.values:
                family.add_metric((state,), counts[state])
        if family.samples:
            yield family


def render() -> bytes:
    """The OpenMetrics text of :class:`ClusterCollector`."""
    registry_ = CollectorRegistry(auto_describe=False)
    registry_.register(ClusterCollector())
    return bytes(generate_latest(registry_))


def _forget() -> None:
    """A forked child has pushed nothing of its own."""
    global _lock
    _lock = threading.Lock()
    _pushed.clear()


os.register_at_fork(after_in_child=_forget)
