"""GCRA in pure Python: exact bursts and refills, all-or-none over several limits, and a
property test against a leaky bucket kept in exact fractions."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import US, Limit

NOW = 1_700_000_000 * US


def hourly(limit: int = 100, key: str = "k", **kwargs: object) -> Limit:
    return Limit(key=key, policy=f"p.{key}", limit=limit, period=3600, **kwargs)  # type: ignore[arg-type]


def test_a_fresh_key_admits_a_burst_of_the_limit_then_one_per_interval() -> None:
    limits = [Limit("k", "p", limit=10, period=60)]
    tat = None
    for expected_remaining in range(9, -1, -1):
        allowed, [outcome], [tat] = gcra.evaluate(limits, [tat], NOW)
        assert allowed and outcome.remaining == expected_remaining
    allowed, [outcome], [unchanged] = gcra.evaluate(limits, [tat], NOW)
    assert not allowed and unchanged is None
    assert outcome.retry_us == 6 * US  # one interval of 60 s / 10
    assert outcome.remaining == 0 and outcome.reset_us == 60 * US
    # Just before the interval: still no; at it: one more.
    assert not gcra.evaluate(limits, [tat], NOW + 6 * US - 1)[0]
    allowed, [outcome], _ = gcra.evaluate(limits, [tat], NOW + 6 * US)
    assert allowed and outcome.remaining == 0


def test_rejection_by_one_limit_charges_none_of_the_others() -> None:
    burst, hour = Limit("b", "burst", 2, 1), hourly()
    tats: list[int | None] = [None, None]
    for _ in range(2):
        allowed, _, new = gcra.evaluate([burst, hour], tats, NOW)
        assert allowed
        tats = new
    allowed, outcomes, new = gcra.evaluate([burst, hour], tats, NOW)
    assert not allowed and new == [None, None]
    assert [o.conform for o in outcomes] == [False, True]
    assert outcomes[1].remaining == 98  # the hourly count is as it was


def test_shadow_limits_report_but_do_not_reject() -> None:
    shadow, enforced = Limit("s", "s", 1, 60, shadow=True), Limit("e", "e", 5, 60)
    _, _, tats = gcra.evaluate([shadow, enforced], [None, None], NOW)
    allowed, outcomes, new = gcra.evaluate([shadow, enforced], tats, NOW)
    assert allowed
    assert not outcomes[0].conform and outcomes[0].retry_us > 0
    assert new[0] is None and new[1] is not None  # the enforced limit is still charged
    decision = gcra.decision([shadow, enforced], allowed, outcomes)
    assert decision.shadowed and decision.violated == ("s",) and decision.retry_after == 0


def test_decision_retry_after_is_the_longest_wait_of_the_broken_limits() -> None:
    a, b = Limit("a", "a", 1, 10), Limit("b", "b", 1, 100)
    _, _, tats = gcra.evaluate([a, b], [None, None], NOW)
    allowed, outcomes, _ = gcra.evaluate([a, b], tats, NOW)
    decision = gcra.decision([a, b], allowed, outcomes)
    assert not allowed and decision.retry_after == 100
    assert set(decision.violated) == {"a", "b"}


def test_cost_spends_several_requests_at_once() -> None:
    limits = [Limit("k", "p", 10, 10)]
    allowed, [outcome], [tat] = gcra.evaluate(limits, [None], NOW, cost=4)
    assert allowed and outcome.remaining == 6
    allowed, [outcome], _ = gcra.evaluate(limits, [tat], NOW, cost=7)
    assert not allowed and outcome.remaining == 6


class Bucket:
    """The model: a leaky bucket of capacity N draining one unit per T / N seconds, in exact
    fractions. GCRA must admit exactly what it admits."""

    def __init__(self, limit: int, interval_us: int) -> None:
        self.limit, self.interval = limit, interval_us
        self.level = Fraction(0)
        self.at = 0

    def admits(self, now: int, cost: int) -> bool:
        """Whether ``cost`` fits at ``now``, charging nothing."""
        self.level = max(Fraction(0), self.level - Fraction(now - self.at, self.interval))
        self.at = now
        return self.level + cost <= self.limit

    def offer(self, now: int, cost: int) -> tuple[bool, int]:
        if self.admits(now, cost):
            self.level += cost
            return True, int(self.limit - self.level)
        return False, int(self.limit - self.level)


@given(
    limit=st.integers(1, 20),
    period=st.integers(1, 120),
    steps=st.lists(st.tuples(st.integers(0, 30 * US), st.integers(1, 3)), max_size=60),
)
def test_gcra_admits_exactly_what_a_leaky_bucket_admits(limit, period, steps) -> None:
    spec = Limit("k", "p", limit, period)
    bucket = Bucket(limit, spec.interval_us)
    now, tat = NOW, None
    bucket.at = now
    for gap, cost in steps:
        now += gap
        allowed, [outcome], [new] = gcra.evaluate([spec], [tat], now, cost)
        expected, remaining = bucket.offer(now, cost)
        assert allowed == expected
        assert outcome.remaining == remaining
        if new is not None:
            tat = new


@given(
    specs=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 60), st.booleans()),
                   min_size=1, max_size=4),
    steps=st.lists(st.integers(0, 10 * US), max_size=40),
)
def test_all_or_none_over_any_limits(specs, steps) -> None:
    limits = [Limit(f"k{i}", f"p{i}", n, t, shadow=s) for i, (n, t, s) in enumerate(specs)]
    buckets = [Bucket(limit.limit, limit.interval_us) for limit in limits]
    tats: list[int | None] = [None] * len(limits)
    now = NOW
    for bucket in buckets:
        bucket.at = now
    for gap in steps:
        now += gap
        allowed, outcomes, new = gcra.evaluate(limits, tats, now)
        admits = [bucket.admits(now, 1) for bucket in buckets]
        assert [outcome.conform for outcome in outcomes] == admits
        assert allowed == all(admit for admit, limit in zip(admits, limits, strict=True)
                              if not limit.shadow)
        for bucket, admit in zip(buckets, admits, strict=True):
            if allowed and admit:  # charged on every conforming limit, or on none
                bucket.offer(now, 1)
        for i, (outcome, tat) in enumerate(zip(outcomes, new, strict=True)):
            if not allowed or not outcome.conform:
                assert tat is None
            else:
                assert tat is not None
                tats[i] = tat
