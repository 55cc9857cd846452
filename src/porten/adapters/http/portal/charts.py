"""Bar charts as inline SVG, drawn on the server: no chart library, no script, CSP-clean.

A chart is a list of ``(label, value)`` bars; the page gets an ``<svg>``
with one ``<rect>`` per bar, scaled to the largest, the label under it and
the value in its ``<title>`` (a tooltip, and text for screen readers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from porten.adapters.http.portal._html import Markup, html, join

WIDTH: Final = 720
HEIGHT: Final = 180
PAD: Final = 24


def bar_chart(bars: Sequence[tuple[str, float]], *, unit: str, chart_id: str) -> Markup:
    """An SVG bar chart of ``bars`` (in order), each value followed by ``unit``."""
    if not bars:
        return html('<p class="hint" id="{id}">Nothing to chart yet.</p>', id=chart_id)
    top = max(v for _, v in bars) or 1.0
    slot = (WIDTH - 2 * PAD) / len(bars)
    width = max(1.0, slot * 0.7)
    usable = HEIGHT - 2 * PAD
    rects = []
    for i, (label, value) in enumerate(bars):
        h = usable * value / top
        x = PAD + i * slot + (slot - width) / 2
        rects.append(html(
            '<g class="bar-group" data-label="{label}" data-value="{value}">'
            '<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}">'
            '<title>{label}: {shown} {unit}</title></rect>'
            '<text x="{tx}" y="{ty}" text-anchor="middle">{short}</text></g>',
            label=label, value=f"{value:g}", x=_n(x), y=_n(PAD + usable - h), w=_n(width),
            h=_n(h), shown=f"{value:,.6g}", unit=unit, tx=_n(x + width / 2), ty=HEIGHT - 6,
            short=label[-5:],
        ))
    return html(
        '<svg class="chart" id="{id}" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
        '<title>{unit} per day</title>'
        '<line class="axis" x1="{pad}" y1="{base}" x2="{right}" y2="{base}"></line>{bars}</svg>',
        id=chart_id, w=WIDTH, h=HEIGHT, unit=unit, pad=PAD, base=HEIGHT - PAD,
        right=WIDTH - PAD, bars=join(rects),
    )


def _n(value: float) -> float:
    """A coordinate (escaped like any value, formatted by the template)."""
    return round(value, 1)
