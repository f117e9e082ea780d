"""Parsing ``"100/min"``-style rates."""

from __future__ import annotations

import dataclasses
import re

import pytest
from django.core.exceptions import ValidationError

from resilience_crm.models import Tier, TierAssignment
from resilience_crm.ratelimit.rates import (
    INVALID_RATE,
    UNKNOWN_OP_CLASS,
    Rate,
    limits_errors,
    parse_rate,
    parse_rates,
)


@pytest.mark.parametrize(
    ("text", "limit", "period", "canonical"),
    [
        ("100/min", 100, 60, "100/min"),
        ("100/m", 100, 60, "100/min"),
        ("100/minute", 100, 60, "100/min"),
        ("100/minutes", 100, 60, "100/min"),
        ("5/s", 5, 1, "5/s"),
        ("5/sec", 5, 1, "5/s"),
        ("5/second", 5, 1, "5/s"),
        ("1000/h", 1000, 3600, "1000/hour"),
        ("1000/hour", 1000, 3600, "1000/hour"),
        ("20000/d", 20000, 86400, "20000/day"),
        ("20000/day", 20000, 86400, "20000/day"),
        ("10/5s", 10, 5, "10/5s"),
        ("10/5min", 10, 300, "10/5min"),
        ("10/5 min", 10, 300, "10/5min"),
        ("7/60s", 7, 60, "7/min"),
        ("3/90s", 3, 90, "3/90s"),
        ("1/24h", 1, 86400, "1/day"),
        ("2/2d", 2, 172800, "2/2day"),
        (" 100 / MIN ", 100, 60, "100/min"),
        ("1/1s", 1, 1, "1/s"),
    ],
)
def test_parse_rate(text: str, limit: int, period: float, canonical: str) -> None:
    rate = parse_rate(text)
    assert rate == Rate(limit=limit, period=float(period))
    assert str(rate) == canonical
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/min", "number of requests must be a whole number above 0, not 0"),
        ("-5/min", "number of requests must be a whole number above 0, not -5"),
        ("1.5/min", "number of requests must be a whole number above 0, not 1.5"),
        ("+5/min", "number of requests must be a whole number above 0, not +5"),
        ("10/0s", "multiplier must be a whole number above 0, not 0"),
        ("10/-5s", "multiplier must be a whole number above 0, not -5"),
        ("10/1.5min", "multiplier must be a whole number above 0, not 1.5"),
        ("100/ms", "unknown unit 'ms'"),
        ("100/week", "unknown unit 'week'"),
        ("100/fortnight", "unknown unit 'fortnight'"),
        ("", "is not a rate"),
        ("abc", "is not a rate"),
        ("100", "is not a rate"),
        ("100/", "is not a rate"),
        ("/min", "is not a rate"),
        ("100/5", "is not a rate"),
        ("100 per minute", "is not a rate"),
        ("100/min/2", "is not a rate"),
        ("100/min, 10/s", "is not a rate"),
    ],
)
def test_parse_rate_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_rate(text)
    assert repr(text) in str(info.value)  # the message quotes what was written


@pytest.mark.parametrize("value", [100, 1.5, None, ["100/min"], {"read": "1/s"}, b"100/min"])
def test_parse_rate_rejects_non_strings(value: object) -> None:
    with pytest.raises(TypeError, match="a rate must be a string"):
        parse_rate(value)  # type: ignore[arg-type]


def test_rate_is_frozen_and_checks_its_fields() -> None:
    rate = Rate(10, 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rate.limit = 20  # type: ignore[misc]
    with pytest.raises(ValueError, match="limit must be above 0"):
        Rate(0, 60.0)
    with pytest.raises(ValueError, match="period must be above 0"):
        Rate(10, 0.0)
    assert rate.interval == 6.0
    assert parse_rate(rate) is rate


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100/min", ["100/min"]),
        (["10/s", "1000/hour"], ["10/s", "1000/hour"]),
        (("10/s", "60/min"), ["10/s", "60/min"]),
        ([], []),
        (None, []),
        (Rate(5, 1.0), ["5/s"]),
    ],
)
def test_parse_rates(value: object, expected: list[str]) -> None:
    assert [str(rate) for rate in parse_rates(value)] == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (["10/s", "ten/min"], ValueError, "'ten/min' is not a rate"),
        (["10/s", "0/min"], ValueError, "'0/min': the number of requests"),
        (["10/s", 10], TypeError, "a rate must be a string"),
        (100, TypeError, "rates must be a string"),
        ({"read": "10/s"}, TypeError, "rates must be a string"),
    ],
)
def test_parse_rates_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        parse_rates(value)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_limits_errors_names_each_problem_once() -> None:
    problems = limits_errors({"read": "10/s", "wirte": "1/s", "write": ["5/s", "x"],
                              "rpc": None}, ("read", "write", "rpc", "auth"))
    assert [(op, kind) for op, kind, _ in problems] == [
        ("wirte", UNKNOWN_OP_CLASS), ("write", INVALID_RATE)]
    assert "'x' is not a rate" in problems[1][2]


@pytest.mark.django_db
def test_tier_and_assignment_clean_use_the_same_validation(django_user_model) -> None:
    with pytest.raises(ValidationError) as tier_error:
        Tier(name="x", limits={"read": "ten/min", "lookup": "1/s"}).clean()
    assert tier_error.value.message_dict["limits"] == [
        "read: " + limits_errors({"read": "ten/min"}, ("read",))[0][2],
        "'lookup' is not an operation class (read, write, rpc, auth).",
    ]
    user = django_user_model.objects.create_user("x")
    with pytest.raises(ValidationError):
        TierAssignment(user=user, tier=Tier.objects.get(name="free"),
                       limits={"write": "0/s"}).clean()
