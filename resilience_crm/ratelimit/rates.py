"""Rates as users write them: ``"100/min"``, ``"10/5s"``, ``["10/s", "1000/hour"]``.

A rate is a whole number of requests per period. The period is a unit (``s``, ``sec``,
``second``, ``m``, ``min``, ``minute``, ``h``, ``hour``, ``d``, ``day``, plurals allowed,
any case) with an optional whole-number multiplier in front: ``"10/5min"`` is ten
requests per five minutes. The limiter applies a rate of N per T as GCRA: a burst of N,
then one request every T / N seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Seconds in each unit a rate may name.
UNITS: dict[str, int] = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}

#: The units ``str(rate)`` writes, largest first.
_CANONICAL = (("day", 86400), ("hour", 3600), ("min", 60), ("s", 1))

_NUMBER = r"[+-]?\d+(?:\.\d*)?"  # looser than allowed, so a bad number gets its own message
_RATE_RE = re.compile(
    rf"^\s*(?P<limit>{_NUMBER})\s*/\s*(?P<count>{_NUMBER})?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)

_FORMAT_HINT = 'write it as "<requests>/<unit>" or "<requests>/<n><unit>", e.g. "100/min"'


@dataclass(frozen=True)
class Rate:
    """``limit`` requests per ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        if self.limit <= 0:
            raise ValueError(f"a rate's limit must be above 0, not {self.limit!r}")
        if self.period <= 0:
            raise ValueError(f"a rate's period must be above 0 seconds, not {self.period!r}")

    @property
    def interval(self) -> float:
        """Seconds between requests at the steady rate (GCRA's emission interval)."""
        return self.period / self.limit

    def __str__(self) -> str:
        for name, seconds in _CANONICAL:
            count, rest = divmod(self.period, seconds)
            if rest == 0 and count >= 1:
                count = int(count)
                return f"{self.limit}/{name}" if count == 1 else f"{self.limit}/{count}{name}"
        return f"{self.limit}/{self.period:g}s"


def parse_rate(text: str | Rate) -> Rate:
    """The :class:`Rate` that ``text`` spells.

    Raises ``ValueError`` saying what is wrong with a malformed string, ``TypeError`` for
    something that is not a string at all.
    """
    if isinstance(text, Rate):
        return text
    if not isinstance(text, str):
        raise TypeError(f"a rate must be a string like \"100/min\", not {text!r}")
    match = _RATE_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: {_FORMAT_HINT}")
    limit, count, unit = match["limit"], match["count"], match["unit"].lower()
    if not limit.isdigit() or int(limit) <= 0:
        raise ValueError(f"{text!r}: the number of requests must be a whole number above 0,"
                         f" not {limit}")
    if unit not in UNITS:
        known = ", ".join(UNITS)
        raise ValueError(f"{text!r}: unknown unit {match['unit']!r}; use one of {known}")
    multiplier = 1
    if count is not None:
        if not count.isdigit() or int(count) <= 0:
            raise ValueError(f"{text!r}: the period's multiplier must be a whole number above 0,"
                             f" not {count}")
        multiplier = int(count)
    return Rate(limit=int(limit), period=float(multiplier * UNITS[unit]))


def parse_rates(value: str | Rate | Iterable[str | Rate] | None) -> list[Rate]:
    """Every rate in ``value``: one rate, a list of them, or ``None`` / ``[]`` for no limit.

    Raises like :func:`parse_rate`; a malformed list item's message names the item.
    """
    if value is None:
        return []
    if isinstance(value, str | Rate):
        return [parse_rate(value)]
    if isinstance(value, list | tuple):
        return [parse_rate(item) for item in value]
    raise TypeError(f"rates must be a string like \"100/min\" or a list of them, not {value!r}")


#: What :func:`limits_errors` found wrong with one entry.
UNKNOWN_OP_CLASS = "op_class"
INVALID_RATE = "rate"


def limits_errors(limits: Mapping[Any, Any],
                  op_classes: Iterable[str]) -> list[tuple[Any, str, str]]:
    """Every problem in one ``{op_class: rate or [rates]}`` mapping, as
    ``(op_class, kind, message)`` with kind :data:`UNKNOWN_OP_CLASS` or :data:`INVALID_RATE`.

    The one validation behind the system checks and ``Tier.clean``.
    """
    known = tuple(op_classes)
    problems: list[tuple[Any, str, str]] = []
    for op_class, rates in limits.items():
        if op_class not in known:
            problems.append((op_class, UNKNOWN_OP_CLASS,
                             f"{op_class!r} is not an operation class ({', '.join(known)})"))
            continue
        try:
            parse_rates(rates)
        except (TypeError, ValueError) as err:
            problems.append((op_class, INVALID_RATE, str(err)))
    return problems
