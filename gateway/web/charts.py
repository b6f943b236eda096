"""Server-rendered SVG line charts for the admin dashboard: no JavaScript, no inline style.

The CSP forbids inline script and style, so every visual property is an SVG presentation
attribute (``stroke``, ``fill``...). Each chart carries a ``<title>`` and ``<desc>`` for
screen readers; the page shows the same numbers in a table next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Colour-blind-safe pair (Okabe-Ito blue and vermillion), both AA on white.
COLOURS = ("#0072B2", "#D55E00", "#009E73")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # None: no data that day (a gap, not a zero)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def line_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: Callable[[float], str] = _fmt,
    width: int = 640,
    height: int = 220,
) -> Markup:
    """An SVG chart with one polyline per series, gaps where a value is missing."""
    left, right, top, bottom = 56, 12, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    present = [v for s in series for v in s.values if v is not None]
    peak = max(present, default=0.0) or 1.0
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / peak

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'font-family="sans-serif" font-size="11">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(_describe(series, unit))}</desc>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#ffffff" '
        f'stroke="#c9d1d9"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        gy = top + plot_h - plot_h * frac
        parts.append(
            f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" '
            f'stroke="#e1e4e8"/>'
            f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="#4a5561">'
            f"{escape(unit(peak * frac))}</text>"
        )
    step = max(1, n // 7)
    for i, label in enumerate(labels):
        if i % step == 0 or i == n - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 14}" text-anchor="middle" fill="#4a5561">'
                f"{escape(label)}</text>"
            )
    for k, s in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
        if run:
            runs.append(run)
        for r in runs:
            parts.append(
                f'<polyline points="{" ".join(r)}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        lx = left + 8 + 150 * k
        parts.append(
            f'<rect x="{lx}" y="{height - 10}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{height - 1}" fill="#1b1f24">{escape(s.name)}</text>'
        )
    parts.append("</svg>")
    # Every interpolated text went through escape(); numbers and colours are ours.
    return Markup("".join(parts))  # noqa: S704


def _describe(series: Sequence[Series], unit: Callable[[float], str]) -> str:
    out = []
    for s in series:
        vals = [v for v in s.values if v is not None]
        if vals:
            out.append(f"{s.name}: latest {unit(vals[-1])}, highest {unit(max(vals))}")
        else:
            out.append(f"{s.name}: no data")
    return "; ".join(out)


def seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def percent(value: float) -> str:
    return f"{value * 100:.0f}%"
