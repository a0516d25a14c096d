"""Small SVG charts shared by the PDF report and the analytics page.

Pure functions that return an `<svg>` element as a string. Every label is
escaped here, so the result can be embedded as is (Jinja: `Markup(svg)`).
Colours and fonts are attributes on the elements themselves: page CSS does not
reach inline SVG in WeasyPrint, and this keeps the browser and the PDF alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: colours of the series, in order
PALETTE = ("#2f6db5", "#e0803a", "#3c9a5f", "#b8474d", "#7d5ab5", "#8c6d46", "#5b8c99")
TEXT = "#222222"
MUTED = "#666666"
GRID = "#dddddd"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
#: what a chart without data says
EMPTY = "No data"


def _num(value: float) -> str:
    """A coordinate, short: 12, 12.5, 12.25."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _text(x: float, y: float, label: str, *, size: float = 10, anchor: str = "middle",
          fill: str = TEXT, weight: str | None = None) -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" '
            f'text-anchor="{anchor}" fill="{fill}"{bold}>{escape(label)}</text>')


def _shorten(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: max(1, limit - 1)] + "…"


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts `span` into about `ticks`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)


def _open(width: float, height: float, title: str) -> list[str]:
    label = escape(title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" '
        f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'role="img" aria-label="{label}" font-family="{FONT}">',
        f"<title>{label}</title>",
        f'<rect x="0" y="0" width="{_num(width)}" height="{_num(height)}" fill="#ffffff"/>',
    ]


def _empty(parts: list[str], width: float, height: float) -> str:
    parts.append(_text(width / 2, height / 2, EMPTY, size=11, fill=MUTED))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    width: float = 360,
    height: float = 200,
    color: str = PALETTE[0],
    x_label: str | None = None,
    value_format: str = "{:g}",
) -> str:
    """Vertical bars, one per (label, value), each with its value above it."""
    parts = _open(width, height, title)
    values = [(label, _finite(v) or 0.0) for label, v in bars]
    parts.append(_text(width / 2, 14, title, size=11, weight="bold"))
    if not values:
        return _empty(parts, width, height)
    left, right, top, bottom = 36.0, 10.0, 28.0, 34.0 if x_label else 22.0
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max(max(v for _, v in values), 0.0)
    step = nice_step(top_value or 1.0, 4)
    y_max = step * max(1, math.ceil(top_value / step))
    base = top + plot_h
    tick = 0.0
    while tick <= y_max + step / 2:
        y = base - plot_h * tick / y_max
        parts.append(f'<line x1="{_num(left)}" y1="{_num(y)}" x2="{_num(width - right)}" '
                     f'y2="{_num(y)}" stroke="{GRID}" stroke-width="0.6"/>')
        parts.append(_text(left - 4, y + 3, f"{tick:g}", size=8, anchor="end", fill=MUTED))
        tick += step
    slot = plot_w / len(values)
    bar_w = slot * 0.62
    limit = max(3, int(slot / 5.5))
    for i, (label, value) in enumerate(values):
        x = left + slot * i + (slot - bar_w) / 2
        h = plot_h * max(value, 0.0) / y_max
        parts.append(f'<rect class="bar" x="{_num(x)}" y="{_num(base - h)}" '
                     f'width="{_num(bar_w)}" height="{_num(h)}" fill="{color}"/>')
        parts.append(_text(x + bar_w / 2, base - h - 3, value_format.format(value), size=8))
        parts.append(_text(x + bar_w / 2, base + 11, _shorten(label, limit), size=8))
    parts.append(f'<line x1="{_num(left)}" y1="{_num(base)}" x2="{_num(width - right)}" '
                 f'y2="{_num(base)}" stroke="{MUTED}" stroke-width="0.8"/>')
    if x_label:
        parts.append(_text(left + plot_w / 2, height - 6, x_label, size=8, fill=MUTED))
    parts.append("</svg>")
    return "".join(parts)


def rating_distribution_chart(
    counts: Mapping[int, int], *, title: str = "Overall rating distribution",
    width: float = 360, height: float = 200,
) -> str:
    """Bars of how many reviews got each overall rating 1..5 (missing ratings count 0)."""
    bars = [(str(r), float(counts.get(r, 0))) for r in range(1, 6)]
    return bar_chart(bars, title=title, width=width, height=height,
                     x_label="Overall rating (rounded)")


def horizontal_bar_chart(
    bars: Sequence[tuple[str, float | None]],
    *,
    title: str,
    max_value: float | None = None,
    width: float = 480,
    bar_height: float = 16,
    color: str = PALETTE[0],
    value_format: str = "{:.2f}",
    label_width: float = 150,
) -> str:
    """One horizontal bar per (label, value), e.g. the average rating of each department.

    A value of None is drawn as "n/a" without a bar.
    """
    gap, top = bar_height * 0.5, 28.0
    height = top + len(bars) * (bar_height + gap) + 10
    if not bars:
        height = 80.0
    parts = _open(width, height, title)
    parts.append(_text(width / 2, 14, title, size=11, weight="bold"))
    if not bars:
        return _empty(parts, width, height)
    values = [(label, _finite(v)) for label, v in bars]
    known = [v for _, v in values if v is not None]
    scale_max = max_value if max_value is not None else max([*known, 0.0]) or 1.0
    plot_w = width - label_width - 48
    limit = max(4, int(label_width / 6))
    for i, (label, value) in enumerate(values):
        y = top + i * (bar_height + gap)
        parts.append(_text(label_width - 6, y + bar_height * 0.72, _shorten(label, limit),
                           size=9, anchor="end"))
        if value is None:
            parts.append(_text(label_width + 4, y + bar_height * 0.72, "n/a", size=8,
                               anchor="start", fill=MUTED))
            continue
        w = plot_w * min(max(value, 0.0), scale_max) / scale_max
        parts.append(f'<rect class="bar" x="{_num(label_width)}" y="{_num(y)}" '
                     f'width="{_num(w)}" height="{_num(bar_height)}" fill="{color}"/>')
        parts.append(_text(label_width + w + 4, y + bar_height * 0.72,
                           value_format.format(value), size=8, anchor="start"))
    parts.append(f'<line x1="{_num(label_width)}" y1="{_num(top - 2)}" '
                 f'x2="{_num(label_width)}" y2="{_num(height - 8)}" stroke="{MUTED}" '
                 f'stroke-width="0.8"/>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    series: Mapping[str, Sequence[tuple[int, float | None]]],
    *,
    title: str,
    width: float = 480,
    height: float = 240,
    y_min: float | None = None,
    y_max: float | None = None,
    value_format: str = "{:g}",
) -> str:
    """One line per series of (year, value) points; None leaves a gap. Legend when > 1 series."""
    legend_h = 16.0 if len(series) > 1 else 0.0
    parts = _open(width, height, title)
    parts.append(_text(width / 2, 14, title, size=11, weight="bold"))
    points = {name: [(int(x), _finite(v)) for x, v in pts] for name, pts in series.items()}
    xs = sorted({x for pts in points.values() for x, _ in pts})
    ys = [v for pts in points.values() for _, v in pts if v is not None]
    if not xs or not ys:
        return _empty(parts, width, height)
    left, right, top, bottom = 40.0, 14.0, 26.0 + legend_h, 24.0
    plot_w, plot_h = width - left - right, height - top - bottom
    low = y_min if y_min is not None else min(0.0, min(ys))
    high = y_max if y_max is not None else max(ys)
    step = nice_step((high - low) or 1.0, 4)
    if y_max is None:
        high = low + step * max(1, math.ceil((high - low) / step))
    span = (high - low) or 1.0
    x_span = (xs[-1] - xs[0]) or 1

    def px(x: int) -> float:
        return left + plot_w * ((x - xs[0]) / x_span if len(xs) > 1 else 0.5)

    def py(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, low), high) - low) / span)

    tick = low
    while tick <= high + step / 2:
        y = py(tick)
        parts.append(f'<line x1="{_num(left)}" y1="{_num(y)}" x2="{_num(width - right)}" '
                     f'y2="{_num(y)}" stroke="{GRID}" stroke-width="0.6"/>')
        parts.append(_text(left - 4, y + 3, value_format.format(tick), size=8, anchor="end",
                           fill=MUTED))
        tick += step
    every = max(1, math.ceil(len(xs) / max(1, int(plot_w / 36))))
    for i, x in enumerate(xs):
        if i % every == 0 or i == len(xs) - 1:
            parts.append(_text(px(x), height - bottom + 12, str(x), size=8, fill=MUTED))
    for n, (name, pts) in enumerate(points.items()):
        color = PALETTE[n % len(PALETTE)]
        run: list[str] = []
        for x, v in sorted(pts, key=lambda p: p[0]) + [(0, None)]:
            if v is not None:
                run.append(f"{_num(px(x))},{_num(py(v))}")
                continue
            if len(run) > 1:
                parts.append(f'<polyline class="line" points="{" ".join(run)}" fill="none" '
                             f'stroke="{color}" stroke-width="1.8"/>')
            run = []
        for x, v in pts:
            if v is not None:
                parts.append(f'<circle cx="{_num(px(x))}" cy="{_num(py(v))}" r="2.4" '
                             f'fill="{color}"/>')
        if legend_h:
            lx = left + n * (plot_w / len(points))
            parts.append(f'<rect x="{_num(lx)}" y="24" width="10" height="4" fill="{color}"/>')
            parts.append(_text(lx + 14, 29, _shorten(name, 24), size=8, anchor="start"))
    parts.append(f'<line x1="{_num(left)}" y1="{_num(top + plot_h)}" '
                 f'x2="{_num(width - right)}" y2="{_num(top + plot_h)}" stroke="{MUTED}" '
                 f'stroke-width="0.8"/>')
    parts.append("</svg>")
    return "".join(parts)
