"""The label a response carries when part of it came from a fallback: ``X-Resilience-Fallback``
(``replica``, ``stale`` or ``degraded``) and, for a replica's or stale data, ``Age``.

The read path records each fallback it serves with :func:`mark`, in a context variable of the
current request (or task); ``drf.FallbackHeadersMixin`` calls :func:`begin` when a request
starts and puts :func:`headers` on its response.
"""

from __future__ import annotations

import contextvars

#: Header names of the label.
FALLBACK_HEADER = "X-Resilience-Fallback"
#: What a fallback served: a read replica's answer, an entry past its freshness, or the
#: caller's degraded value.
REPLICA, STALE, DEGRADED = "replica", "stale", "degraded"
#: Of several parts of one answer, the label names the furthest from fresh data.
RANK = {REPLICA: 1, STALE: 2, DEGRADED: 3}
#: Labels whose ``Age`` says how old the data is.
AGED = (REPLICA, STALE)

_served: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar(
    "resilience_crm_served", default=None)


def begin() -> None:
    """Forget earlier labels; call at the start of each request."""
    _served.set(None)


def mark(kind: str, age: float = 0.0) -> None:
    """Record that part of the current answer came from a fallback: ``degraded`` (no real
    data) outranks ``stale``, which outranks ``replica``; of parts with one label the oldest
    age is kept."""
    current = _served.get()
    if current is None or RANK[kind] > RANK[current[0]]:
        _served.set((kind, age))
    elif kind == current[0]:
        _served.set((kind, max(age, current[1])))


def headers() -> dict[str, str]:
    """The response headers that label the current request's fallback, if any."""
    current = _served.get()
    if current is None:
        return {}
    kind, age = current
    if kind in AGED:
        return {FALLBACK_HEADER: kind, "Age": str(int(age))}
    return {FALLBACK_HEADER: kind}
