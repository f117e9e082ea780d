"""GCRA (the generic cell rate algorithm) over several limits at once, in pure Python.

A limit of N requests per T seconds keeps one number per key: the *theoretical arrival time*
(TAT), the moment the key's bucket is full again. A request conforms when, after adding one
emission interval ``I = T / N`` to the TAT, the TAT lies no more than ``T`` ahead of now: so a
fresh key admits a burst of N, then one request every ``I``. A rejected request knows exactly
when it would conform (``Retry-After``) and how many requests are left (``RateLimit``).

:func:`evaluate` decides every limit that applies to one request together and consumes from
all of them or from none. Limits marked ``shadow`` are decided and reported but never reject;
limits marked ``checked`` can reject but are never charged.
Times are whole microseconds, so this module, ``stores/gcra.lua`` and any clock agree to the
microsecond. The Redis and in-process limiter stores both run exactly this arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

#: Microseconds per second.
US = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one key: ``limit`` requests per ``period`` seconds."""

    key: str
    policy: str
    limit: int
    period: float
    shadow: bool = False
    #: Checked but never charged: the request must conform to it, and spends nothing of it
    #: (an address's ``AUTH_FAILURES``, checked in the same step as the request's own limits).
    checked: bool = False
    #: The emission interval in whole microseconds, rounded up (never faster than asked).
    interval_us: int = field(init=False)
    #: How far ahead of now the TAT may lie: the burst of ``limit`` requests.
    tolerance_us: int = field(init=False)

    def __post_init__(self) -> None:
        if self.shadow and self.checked:
            raise ValueError(f"{self.policy}: a limit is shadow or checked, not both.")
        # Worked out once: a limit is built once per client and used on every request.
        interval = -(-round(self.period * US) // self.limit)
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", interval * self.limit)


class Outcome(NamedTuple):
    """What one limit says about one request. Durations are microseconds."""

    conform: bool
    remaining: int
    reset_us: int  # until the bucket is full again
    retry_us: int  # until the request would conform; 0 when it does


def evaluate(limits: Sequence[Limit], tats: Sequence[int | None], now_us: int,
             cost: int = 1) -> tuple[bool, list[Outcome], list[int | None]]:
    """Decide one request of weight ``cost`` against every limit.

    ``tats`` holds each limit's stored TAT (``None`` for a key never seen or expired).
    Returns ``(allowed, outcomes, new_tats)``; ``new_tats[i]`` is the TAT to store, or
    ``None`` to leave the key as it is. The request is allowed when every non-shadow limit
    conforms; then every conforming limit is charged, shadow ones included, and checked
    ones never. When it is rejected, no limit is charged.
    """
    staged = []
    allowed = True
    for limit, stored in zip(limits, tats, strict=True):
        interval, tolerance = limit.interval_us, limit.tolerance_us
        tat = now_us if stored is None or stored < now_us else stored
        new_tat = tat + interval * cost
        conform = new_tat - now_us <= tolerance
        if not conform and not limit.shadow:
            allowed = False
        staged.append((interval, tolerance, tat, new_tat, conform, limit.checked))
    outcomes: list[Outcome] = []
    new_tats: list[int | None] = []
    for interval, tolerance, tat, new_tat, conform, checked in staged:
        if allowed and conform and not checked:
            outcomes.append(Outcome(True, (tolerance - (new_tat - now_us)) // interval,
                                    new_tat - now_us, 0))
            new_tats.append(new_tat)
        else:
            retry = 0 if conform else new_tat - now_us - tolerance
            outcomes.append(Outcome(conform, max(0, (tolerance - (tat - now_us)) // interval),
                                    tat - now_us, retry))
            new_tats.append(None)
    return allowed, outcomes, new_tats


class PolicyState(NamedTuple):
    """One limit's part of a decision, in the units the HTTP headers use."""

    policy: str
    limit: int
    window: float  # seconds
    remaining: int
    reset: float  # seconds until the quota is whole again
    retry_after: float  # seconds until a rejected request would conform; 0 when it conforms
    conform: bool
    shadow: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request: allowed or not, and every policy's state.

    ``source`` says who decided: ``"store"`` (the shared store), ``"fallback"`` (this
    process's limiter while the store is unreachable), ``"unavailable"`` (the store is
    unreachable and the op class fails closed), ``"exempt"`` or ``"unlimited"``.
    """

    allowed: bool
    policies: tuple[PolicyState, ...] = ()
    source: str = "store"
    op_class: str = ""
    retry_after: float = 0.0
    violated: tuple[str, ...] = ()

    @property
    def shadowed(self) -> bool:
        """Allowed only because the limits it broke are in shadow mode."""
        return self.allowed and bool(self.violated)

    def tightest(self) -> PolicyState | None:
        """The policy closest to rejecting: fewest remaining, then the longest reset."""
        if not self.policies:
            return None
        return min(self.policies, key=lambda p: (p.remaining, -p.reset))


def decision(limits: Sequence[Limit], allowed: bool, outcomes: Sequence[Outcome], *,
             source: str = "store", op_class: str = "") -> Decision:
    """The :class:`Decision` for :func:`evaluate`'s (or the Lua script's) raw answer."""
    policies = tuple([
        PolicyState(limit.policy, limit.limit, limit.period, outcome.remaining,
                    outcome.reset_us / US, outcome.retry_us / US, outcome.conform, limit.shadow)
        for limit, outcome in zip(limits, outcomes, strict=True)
    ])
    if all([outcome.conform for outcome in outcomes]):  # the usual case: nothing to report
        return Decision(allowed, policies, source, op_class)
    violated = tuple([p.policy for p in policies if not p.conform])
    retry_after = 0.0
    if not allowed:
        retry_after = max([p.retry_after for p in policies if not p.conform and not p.shadow],
                          default=0.0)
    return Decision(allowed, policies, source, op_class, retry_after, violated)

