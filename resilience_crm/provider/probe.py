"""What the write queue's Redis can be asked from outside: how many writes wait in it, and
whether they would survive a restart or a full memory. Readiness and the deploy checks
(``resilience_crm.W011``, ``W013``) report the answers.
"""

from __future__ import annotations

import time

import resilience_crm.provider.stream as stream
from resilience_crm.conf import settings

#: Seconds a process trusts what it last read of Redis's configuration: readiness probes
#: ask on every probe, and the answer changes only when an operator reconfigures.
REDIS_CONFIG_TTL = 60.0
#: The Redis settings the write queue depends on.
REDIS_CONFIG_KEYS = ("appendonly", "save", "maxmemory-policy", "cluster-enabled")
#: ``maxmemory-policy`` values that never evict the stream, which has no TTL.
NON_EVICTING_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random",
                         "volatile-ttl")

_redis_config: dict[str, tuple[float, dict[str, str]]] = {}  # cache alias -> (read at, config)


def stream_length() -> int:
    """Writes waiting in the Redis stream: 0 without Redis, -1 when it cannot be read."""
    if not stream.available():
        return 0
    try:
        client, cache = stream.connection()
        return int(client.xlen(cache.make_key(stream.STREAM_KEY)))
    except Exception:  # noqa: BLE001
        return -1


def waiting(counts: dict[str, int]) -> dict[str, int]:
    """The queue's depth as an operator reads it: ``counts`` (``QueuedWrite.counts()``, the
    rows by state) with ``in_redis``, the writes still in the Redis stream and not yet in the
    database (-1: Redis did not answer), and ``waiting``, every write not yet applied nor
    dead: pending, applying and failed rows, and those in Redis."""
    in_redis = stream_length()
    rows = sum(counts.get(state, 0) for state in ("pending", "applying", "failed"))
    return {**counts, "in_redis": in_redis, "waiting": rows + max(0, in_redis)}


def redis_config() -> dict[str, str] | None:
    """The Redis settings in ``REDIS_CONFIG_KEYS``, read with ``CONFIG GET`` and kept for
    ``REDIS_CONFIG_TTL`` seconds; ``None`` when they cannot be read (no Redis, ``CONFIG``
    disabled, as managed Redis often does, or Redis unreachable: the next call asks again)."""
    if not stream.available():
        return None
    alias = settings.CACHE_ALIAS
    known = _redis_config.get(alias)
    if known is not None and time.monotonic() - known[0] < REDIS_CONFIG_TTL:
        return known[1]
    try:
        client, _ = stream.connection()
        config: dict[str, str] = {}
        for name in REDIS_CONFIG_KEYS:
            config.update({stream.text(k): stream.text(v)
                           for k, v in client.config_get(name).items()})
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
