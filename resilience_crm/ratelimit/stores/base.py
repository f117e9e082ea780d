"""The interface every rate-limit store implements: one atomic GCRA decision per request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from resilience_crm.ratelimit.gcra import Limit, Outcome


class BaseLimiterStore(ABC):
    """Keeps each limit's TAT and applies :func:`resilience_crm.ratelimit.gcra.evaluate`
    atomically."""

    #: Whether every process sees the same counts (False for the in-process store).
    shared = True
    #: Whether :meth:`refusals` knows when each limit last refused.
    records_refusals = False
    #: Whether :meth:`evaluate` takes limits of other principals that are only checked
    #: (``Limit.checked``) in the same atomic step as the request's own: the limiter then
    #: checks an address's ``AUTH_FAILURES`` with the request's limits, not a step before.
    checks_in_step = False

    def key(self, principal: str, suffix: str, tag: str | None = None) -> str:
        """The key of one limit of ``principal``. Its hash tag (``tag``, by default the
        principal) is the same for every key one decision touches, so they live in one
        Redis Cluster slot and one script decides them together: a decision that includes
        a limit shared by every client (``GLOBAL_LIMITS``) tags its client's keys with that
        limit's principal (``rl:{global}:u:42:read:60``)."""
        if tag is None or tag == principal:
            return f"rl:{{{principal}}}:{suffix}"
        return f"rl:{{{tag}}}:{principal}:{suffix}"

    @abstractmethod
    def evaluate(self, limits: Sequence[Limit], cost: int = 1,
                 now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        """Decide and charge every limit in one atomic step; ``now_us`` is for tests only.

        Raises :class:`resilience_crm.exceptions.StoreUnavailable` when the store cannot be
        reached.
        """

    def peek(self, limits: Sequence[Limit], cost: int = 1,
             now_us: int | None = None) -> tuple[bool, list[Outcome]]:
        """What :meth:`evaluate` would answer now, charging nothing (for refusing a client
        whose failures are spent before anything is looked up); ``now_us`` is for tests.

        Raises ``StoreUnavailable`` like :meth:`evaluate`. Stores that cannot tell raise
        ``NotImplementedError``: set ``AUTH_FAILURES`` to ``None`` with them.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot peek at its limits.")

    def refusals(self, limits: Sequence[Limit]) -> list[int | None]:
        """When each limit last refused a request (microseconds since the epoch), ``None``
        where unknown: for operators (``resilience_limits``). Stores that keep no record
        answer ``None`` for every limit."""
        return [None] * len(limits)

    def sweep(self) -> int:
        """Forget keys whose bucket is full again, a bounded amount per call; how many went.
        Stores whose keys expire by themselves have nothing to do."""
        return 0
