"""Small SVG charts drawn on the server: no script, no CDN, readable without colour.

Each chart is a row of bars, one per time slot, over a y scale (0, the middle and the top,
a round number at or above the largest value, or a given ceiling) and a time axis with a
label at each tick. Periods when the circuit was open are shaded behind the bars. Each bar
has a ``<title>``, so a pointer shows the exact figure. Axis, text and shading take their
colours from the admin's CSS variables (the dashboard's stylesheet), so they follow its
light and dark themes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

#: The chart's size in CSS pixels, and the plot's margins: y labels on the left, time
#: labels under it.
WIDTH, HEIGHT = 360, 96
LEFT, RIGHT, TOP, BOTTOM = 40, 6, 6, 16
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover  (the loop always returns)


def number(value: float) -> str:
    """A scale label: ``0``, ``2.5``, ``40``, ``2.5k``, ``1.2M``."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def bars(values: Sequence[float | None], labels: Sequence[str], *, colour: str,
         ceiling: float | None = None, fmt: str = "{:,.0f}", title: str = "",
         scale: Callable[[float], str] | None = None, ticks: Sequence[tuple[int, str]] = (),
         shaded: Sequence[tuple[float, float]] = ()) -> SafeString:
    """A bar chart of ``values`` (``None`` or 0: nothing to draw in that slot), each bar
    titled with its label and its value formatted with ``fmt``; the y scale is labelled by
    ``scale`` (default: ``fmt``). ``ticks``: ``(slot, label)`` pairs for the time axis (a
    tick at slot ``len(values)`` is the right edge). ``shaded``: ``(from, to)`` slot
    positions (floats) of periods to shade, e.g. when the circuit was open."""
    top = ceiling if ceiling else nice_ceiling(max((v for v in values if v), default=0))
    slots = max(1, len(values))
    slot = PLOT_WIDTH / slots
    gap = min(1.0, slot / 4)
    bottom = TOP + PLOT_HEIGHT
    shades = []
    for start, end in shaded:
        start, end = max(0.0, start), min(float(slots), end)
        if end > start:
            shades.append((f"{LEFT + start * slot:.1f}", str(TOP),
                           f"{max(1.0, (end - start) * slot):.1f}", str(PLOT_HEIGHT)))
    rects = []
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        if not value:
            continue
        height = max(1.0, min(1.0, value / top) * PLOT_HEIGHT)
        rects.append((f"{LEFT + index * slot + gap / 2:.1f}", f"{bottom - height:.1f}",
                      f"{max(0.5, slot - gap):.1f}", f"{height:.1f}", colour,
                      f"{label}: {fmt.format(value)}"))
    label_of = scale or fmt.format
    lines = []  # (y of the line, y of its label, label): 0, the middle, the top
    for share in (0.0, 0.5, 1.0):
        y = TOP + PLOT_HEIGHT * (1 - share)
        lines.append((f"{y:.1f}", f"{y + 3:.1f}", label_of(top * share)))
    times = [(f"{LEFT + index * slot:.1f}", _anchor(index, slots), label)
             for index, label in ticks]
    right = WIDTH - RIGHT
    return format_html(
        '<svg class="resilience-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" '
        'width="{}" height="{}">{}{}{}<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>'
        "{}{}{}</svg>",
        title, WIDTH, HEIGHT, WIDTH, HEIGHT,
        format_html_join("", '<rect class="open-period" x="{}" y="{}" width="{}" height="{}">'
                         "<title>open</title></rect>", shades),
        format_html_join("", '<line class="grid" x1="{}" y1="{}" x2="{}" y2="{}"/>',
                         ((LEFT, y, right, y) for y, _, _ in lines[1:])),
        format_html_join("", '<text class="y-label" x="{}" y="{}" text-anchor="end">{}</text>',
                         ((LEFT - 3, y, text) for _, y, text in lines)),
        LEFT, bottom + 0.5, right, bottom + 0.5,
        format_html_join("", '<line class="tick" x1="{}" y1="{}" x2="{}" y2="{}"/>',
                         ((x, bottom, x, bottom + 3) for x, _, _ in times)),
        format_html_join("", '<text class="x-label" x="{}" y="{}" text-anchor="{}">{}</text>',
                         ((x, HEIGHT - 2, anchor, label) for x, anchor, label in times)),
        format_html_join("", '<rect class="bar" x="{}" y="{}" width="{}" height="{}" '
                             'fill="{}"><title>{}</title></rect>', rects),
    )


def _anchor(index: int, slots: int) -> str:
    if index <= 0:
        return "start"
    return "end" if index >= slots else "middle"
