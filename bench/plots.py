"""The benchmarks' pictures: standalone SVG files for docs/img/, drawn without a plotting
library, as the admin draws its charts (resilience_crm/admin/charts.py, which needs Django
set up and the admin's stylesheet; these files stand alone).

- :func:`latency` draws latency distributions: one panel per measure, one line per side
  giving the latency (across, logarithmic) at or under which each share of the calls
  finished (up, 0 to p99.9, each nine as tall as the one before, so the tail shows); p50
  and p99 named in the legend;
- :func:`timeline` draws throughput over time: one panel per chaos scenario, answers per
  second stacked by outcome, the fault's window shaded.

Sides are told apart by dash pattern as well as colour, so the figures read in grey too.
Values are seconds. Every file has a white background, so it reads on a dark page as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

#: Where ``make bench`` and ``make chaos`` write their figures (docs/benchmarks.md shows them).
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
WIDTH = 720
LEFT, RIGHT = 64, 24
PLOT_WIDTH = WIDTH - LEFT - RIGHT
FONT = 'font-family="sans-serif"'
#: Line colour and dash pattern of each side, in the order the sides are given: ours first.
STYLES = (("#1f5fa8", ""), ("#c2410c", "7 3"), ("#15803d", "2 2"), ("#7e22ce", "9 3 2 3"),
          ("#6b7280", "1 3"), ("#0f766e", "12 3"), ("#111827", "4 2 1 2 1 2"))
#: The colours of a timeline's outcomes, bottom to top: answered, answered from a fallback,
#: refused, failed.
OUTCOME_COLOURS = ("#1f5fa8", "#93c5fd", "#f59e0b", "#b91c1c")


def duration(seconds: float) -> str:
    """``120 ns``, ``1.5 µs``, ``40 ms``, ``2 s``."""
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def round_up(value: float) -> float:
    """1, 2 or 5 times a power of ten, the smallest at least ``value`` (1 for nothing)."""
    power = 10.0 ** math.floor(math.log10(value)) if value > 0 else 1.0
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def quantile(ordered: Sequence[float], share: float) -> float:
    """The value at ``share`` of sorted ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "",
          size: int = 11) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} font-size="{size}"'
            f' {extra}>{escape(text)}</text>')


def _document(height: float, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {WIDTH} '
            f'{height:.0f}" width="{WIDTH}" height="{height:.0f}"><title>{escape(title)}'
            f'</title><rect width="100%" height="100%" fill="#ffffff"/>'
            + _text(LEFT, 18, title, extra='font-weight="bold"', size=13)
            + "".join(body) + "</svg>\n")


def save(svg: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    print(f"  plot: {path}")
    return path


# Latency distributions ------------------------------------------------------------------

#: A panel: its heading and each side's latencies in seconds (ours first).
Panel = tuple[str, dict[str, Sequence[float]]]
PANEL_HEIGHT, PANEL_TOP, PANEL_BOTTOM = 150, 26, 30


def latency(title: str, panels: Sequence[Panel]) -> str:
    """Latency distributions, one panel per measure, on one logarithmic axis per panel from
    the fastest side's p0.1 to the slowest's p99.9 (the extremes are left out)."""
    body: list[str] = []
    top = 30.0
    for heading, sides in panels:
        sides = {name: sorted(values) for name, values in sides.items() if values}
        legend = len(sides) * 15 + 6
        body += _cdf_panel(top, heading, sides)
        top += PANEL_TOP + PANEL_HEIGHT + PANEL_BOTTOM
        for index, (name, ordered) in enumerate(sides.items()):
            colour, dash = STYLES[index % len(STYLES)]
            y = top + index * 15
            body.append(f'<line x1="{LEFT}" y1="{y - 4}" x2="{LEFT + 28}" y2="{y - 4}" '
                        f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
            body.append(_text(LEFT + 34, y, f"{name}: p50 {duration(quantile(ordered, 0.5))}, "
                              f"p99 {duration(quantile(ordered, 0.99))} "
                              f"({len(ordered):,} samples)"))
        top += legend
    return _document(top, title, body)


#: The share axis: 0 at the bottom, then each nine as far up as the one before, to 99.9 %.
NINES = 3


def _height(share: float) -> float:
    """Where ``share`` sits on the share axis, from 0 (bottom) to 1 (99.9 %)."""
    return min(NINES, -math.log10(max(1 - share, 10.0 ** -NINES))) / NINES


def _cdf_panel(top: float, heading: str, sides: dict[str, list[float]]) -> list[str]:
    low = min(max(quantile(v, 0.001), 1e-9) for v in sides.values())
    high = max(quantile(v, 0.999) for v in sides.values())
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    last = max(last, first + 1)
    y0, x0 = top + PANEL_TOP, LEFT

    def x_of(value: float) -> float:
        share = (math.log10(min(max(value, 10.0 ** first), 10.0 ** last)) - first) / (
            last - first)
        return x0 + share * PLOT_WIDTH

    def y_of(share: float) -> float:
        return y0 + PANEL_HEIGHT * (1 - _height(share))

    parts = [_text(LEFT, top + 16, heading, extra='font-weight="bold"')]
    for share, label in ((0.0, "0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"),
                         (0.999, "p99.9")):
        y = y_of(share)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PLOT_WIDTH}" y2="{y:.1f}" '
                     f'stroke="#d1d5db" stroke-width="{1 if share else 1.5}"/>')
        parts.append(_text(x0 - 4, y + 4, label, "end"))
    for power in range(first, last + 1):
        for step in (1, 2, 5):
            value = step * 10.0 ** power
            if value > 10.0 ** last:
                break
            x = x_of(value)
            parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + PANEL_HEIGHT + 4}"'
                         f' stroke="{"#d1d5db" if step == 1 else "#f1f5f9"}"/>')
            if step == 1 or last - first <= 2:
                parts.append(_text(x, y0 + PANEL_HEIGHT + 16, duration(value), "middle"))
    for index, ordered in enumerate(sides.values()):
        colour, dash = STYLES[index % len(STYLES)]
        points = []
        for n in range(301):
            share = 1 - 10.0 ** (-NINES * n / 300) if n else 0.0
            points.append(f"{x_of(quantile(ordered, share) if n else ordered[0]):.1f},"
                          f"{y_of(share):.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" stroke-dasharray="{dash}"/>')
    return parts


# Throughput over a chaos run ------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """A scenario's answers per slot of ``width`` seconds, from ``start`` seconds relative
    to the fault's beginning; ``counts`` holds one tuple per slot, one count per outcome
    (in the order :func:`timeline` names them); the fault lasted from 0 to ``fault``
    seconds."""

    heading: str
    start: float
    width: float
    fault: float
    counts: Sequence[Sequence[int]]


TIMELINE_HEIGHT = 90


def timeline(title: str, outcomes: Sequence[str], scenarios: Sequence[Timeline]) -> str:
    """Answers per second through each scenario, stacked by outcome (``outcomes`` names
    them, bottom to top, at most four), the fault shaded."""
    body = []
    for index, (name, colour) in enumerate(zip(outcomes, OUTCOME_COLOURS, strict=False)):
        x = LEFT + index * 160
        body.append(f'<rect x="{x}" y="28" width="12" height="10" fill="{colour}"/>')
        body.append(_text(x + 16, 37, name))
    body.append(f'<rect x="{LEFT + 4 * 160 - 30}" y="28" width="12" height="10" '
                f'fill="#e5e7eb" stroke="#9ca3af"/>')
    body.append(_text(LEFT + 4 * 160 - 14, 37, "fault"))
    top = 46.0
    ceiling = round_up(max((sum(slot) / s.width for s in scenarios for slot in s.counts),
                               default=0))
    for scenario in scenarios:
        body += _timeline_panel(top, scenario, ceiling, outcomes)
        top += PANEL_TOP + TIMELINE_HEIGHT + 22
    return _document(top, title, body)


def _timeline_panel(top: float, scenario: Timeline, ceiling: float,
                    outcomes: Sequence[str]) -> list[str]:
    y0 = top + PANEL_TOP
    slots = max(1, len(scenario.counts))
    slot = PLOT_WIDTH / slots
    span = slots * scenario.width

    def x_at(seconds: float) -> float:
        return LEFT + (seconds - scenario.start) / span * PLOT_WIDTH

    parts = [_text(LEFT, top + 16, scenario.heading, extra='font-weight="bold"'),
             f'<rect x="{x_at(0):.1f}" y="{y0}" width="{x_at(scenario.fault) - x_at(0):.1f}" '
             f'height="{TIMELINE_HEIGHT}" fill="#e5e7eb"><title>fault</title></rect>']
    for share in (0.0, 0.5, 1.0):
        y = y0 + TIMELINE_HEIGHT * (1 - share)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_WIDTH}" y2="{y:.1f}" '
                     f'stroke="#d1d5db"/>')
        parts.append(_text(LEFT - 4, y + 4, f"{ceiling * share:g}" + ("/s" if share else ""),
                           "end"))
    for index, counts in enumerate(scenario.counts):
        bottom = y0 + TIMELINE_HEIGHT
        at = scenario.start + index * scenario.width
        for count, name, colour in zip(counts, outcomes, OUTCOME_COLOURS, strict=False):
            if not count:
                continue
            height = count / scenario.width / ceiling * TIMELINE_HEIGHT
            parts.append(f'<rect x="{LEFT + index * slot + 0.5:.1f}" y="{bottom - height:.1f}" '
                         f'width="{max(0.5, slot - 1):.1f}" height="{height:.1f}" '
                         f'fill="{colour}"><title>{at:+.0f} s: {count} {name}</title></rect>')
            bottom -= height
    first = math.ceil(scenario.start / 5) * 5
    for seconds in range(first, int(scenario.start + span) + 1, 5):
        x = x_at(seconds)
        parts.append(_text(x, y0 + TIMELINE_HEIGHT + 14, f"{seconds:+d} s" if seconds else "0",
                           "middle"))
    return parts
