"""The protected data provider: what views call instead of the ORM bare.

``protected.read / write / rpc / auth`` run a call under its circuit's deadline, with
retries, error classes, cached read fallbacks and a durable queue for writes while the
database is down. Open ``facade.py`` first (``protected`` and the ``Provider`` class, the
public API), then:

- ``calls.py``: the call engine, one call under its breaker and deadline, with retries;
- ``deadlines.py``, ``retries.py``: the call's budget, its backoff and retry budget;
- ``folding.py``: the statement timeout and the ``COMMIT`` sent with the caller's own
  statements, not in round trips of their own;
- ``classify.py``: which errors are whose, and the error class a client gets;
- ``reads.py``: the read path, stale-while-revalidate and single-flight;
- ``cache.py``: the read cache, its per-process layer, leases and shared errors;
- ``labels.py``: the ``X-Resilience-Fallback`` label of a response served from a fallback;
- ``replicas.py``: read replicas as a fallback tier, their lag and the router's hint;
- ``queue.py``: ``submit`` and ``validate``, writes applied now or queued;
- ``handlers.py``: the registered write handlers, and what their rows can hold;
- ``stream.py``: the Redis stream queued writes wait in (``enqueue.lua``);
- ``replay.py``: replaying queued writes exactly once, under leases;
- ``probe.py``: the queue's depth and whether its Redis would keep it;
- ``checks.py``: the system checks on the provider's settings.

Arrows: provider -> breakers, never the other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilience_crm.provider.facade import Provider, protected

__all__ = ["Provider", "protected"]


def __getattr__(name: str) -> Any:
    """``protected`` and ``Provider``, imported on first use (they need the app registry)."""
    if name in __all__:
        from resilience_crm.provider import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'resilience_crm.provider' has no attribute {name!r}")
