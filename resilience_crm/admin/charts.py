"""Small SVG charts rendered on the server: no script, no CDN, readable without colour.

Each chart is a row of bars, one per time slot, scaled to the largest value (or a given
ceiling), with a ``<title>`` per bar so a pointer shows the exact figure.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

#: The chart's size in CSS pixels.
WIDTH, HEIGHT = 360, 64


def bars(values: Sequence[float | None], labels: Sequence[str], *, colour: str,
         ceiling: float | None = None, fmt: str = "{:,.0f}", title: str = "") -> SafeString:
    """A bar chart of ``values`` (``None`` or 0: nothing to draw in that slot), each bar
    titled with its label and its value formatted with ``fmt``."""
    top = ceiling if ceiling else max((v for v in values if v is not None), default=0) or 1
    slot = WIDTH / max(1, len(values))
    gap = min(1.0, slot / 4)
    rects = []
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        if not value:
            continue
        height = max(1.0, min(1.0, value / top) * (HEIGHT - 2))
        rects.append((f"{index * slot + gap / 2:.1f}", f"{HEIGHT - height:.1f}",
                      f"{max(0.5, slot - gap):.1f}", f"{height:.1f}", colour,
                      f"{label}: {fmt.format(value)}"))
    body = format_html_join(
        "", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        rects)
    return format_html(
        '<svg class="resilience-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" '
        'width="{}" height="{}" preserveAspectRatio="none">'
        '<line x1="0" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-width="1"/>{}</svg>',
        title, WIDTH, HEIGHT, WIDTH, HEIGHT, HEIGHT - 0.5, WIDTH, HEIGHT - 0.5, body,
    )
