"""Read replicas as a fallback tier: when a read's primary fails (or its circuit is open), the
read asks a healthy streaming replica before it serves its stale cache.

Each replica alias in ``READ_REPLICAS`` (or a read's own ``replicas=``) has a circuit of its
own, ``replica.<alias>``. While a replica is asked, :func:`reading_from` names it, and
:class:`~resilience_crm.routers.ResilienceRouter` sends every ORM read to it (writes never:
the router sends no write to a replica). A replica further behind than ``MAX_REPLICA_LAG``
seconds is skipped; the answer is labelled ``X-Resilience-Fallback: replica`` with ``Age``
set from the replica's replay lag.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from resilience_crm.conf import settings

#: The lag query: 0 while the replica has replayed all it received (or is no replica at
#: all), else the seconds since the last transaction it replayed was committed.
LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0"
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)

_reading_from: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "resilience_crm_replica", default=None)


class TooFarBehind(Exception):
    """The replica's replay lag is over ``MAX_REPLICA_LAG``: not a failure of the replica
    (its circuit does not count it), only not fresh enough to serve."""

    def __init__(self, alias: str, lag: float) -> None:
        super().__init__(f"{alias} is {lag:.1f} s behind its primary")
        self.alias, self.lag = alias, lag


def circuit_of(alias: str) -> str:
    """The circuit a replica's reads go through."""
    return f"replica.{alias}"


def candidates(replicas: list[str] | tuple[str, ...] | None) -> list[str]:
    """The aliases a read may fall back to, in order: its own, or ``READ_REPLICAS``; only
    those ``DATABASES`` defines (the checks report the others)."""
    aliases = settings.READ_REPLICAS if replicas is None else replicas
    return [alias for alias in aliases or () if alias in connections.settings]


def reading_from() -> str | None:
    """The replica the current read asks, if any (for the router)."""
    return _reading_from.get()


@contextmanager
def reading(alias: str) -> Iterator[None]:
    """Route this context's ORM reads to ``alias``."""
    token = _reading_from.set(alias)
    try:
        yield
    finally:
        _reading_from.reset(token)


def lag(alias: str) -> float:
    """Seconds ``alias`` is behind its primary, on PostgreSQL (0 elsewhere)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute(LAG_SQL)
        (seconds,) = cursor.fetchone()
    return max(0.0, float(seconds or 0))


def checked(alias: str) -> float:
    """The replica's lag, or :class:`TooFarBehind` when it is over ``MAX_REPLICA_LAG``."""
    seconds = lag(alias)
    if seconds > float(settings.MAX_REPLICA_LAG):
        raise TooFarBehind(alias, seconds)
    return seconds
