"""Counters kept by this worker process: calls by outcome, rejections, transitions, store errors.

They are cheap enough for the hot path (one dict update under the GIL) and are read by the
status command, the readiness endpoint and the metrics exposition.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

_counters: Counter[tuple[Any, ...]] = Counter()


def key(name: str, **labels: str) -> tuple[Any, ...]:
    """The counter's key; hot paths build it once and pass it to :func:`add`."""
    return (name, *sorted(labels.items()))


def add(counter: tuple[Any, ...], amount: int = 1) -> None:
    _counters[counter] += amount


def inc(name: str, amount: int = 1, **labels: str) -> None:
    _counters[key(name, **labels)] += amount


def value(name: str, **labels: str) -> int:
    return _counters[key(name, **labels)]


def collect() -> list[tuple[str, dict[str, str], int]]:
    """Every counter as ``(name, labels, value)``."""
    return [(key[0], dict(key[1:]), count) for key, count in sorted(_counters.items())]


def reset() -> None:
    _counters.clear()
