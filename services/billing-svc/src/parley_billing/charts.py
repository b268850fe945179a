"""Inline SVG charts for the tenant web page, rendered on the server (no scripts, no CDN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = {
    "llm": "#3465a4",
    "vision": "#75507b",
    "stt": "#4e9a06",
    "tts": "#c4a000",
    "embedding": "#ce5c00",
    "session": "#555753",
}
LEVER_COLOR = "#2e8b57"
NAIVE_COLOR = "#cc3333"
ACTUAL_COLOR = "#3465a4"
_FALLBACK = "#888a85"


def usd(value: float) -> str:
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def cost_over_time(
    days: Sequence[str], series: Mapping[str, Sequence[float]], *, width: int = 760,
    height: int = 260,
) -> str:
    """Stacked daily cost bars, one colour per usage type."""
    left, right, top, bottom = 64, 12, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    peak = max(totals, default=0.0) or 1.0
    out = [
        f'<svg id="cost-chart" role="img" aria-label="Cost per day" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                   'stroke="#dddddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="#333">{escape(usd(peak * frac))}</text>')
    n = max(len(days), 1)
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.8)
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y_cursor = float(top + plot_h)
        for kind, values in series.items():
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y_cursor -= h
            out.append(
                f'<rect class="bar" data-day="{escape(day)}" data-type="{escape(kind)}" '
                f'data-cost="{value:.6f}" x="{x:.1f}" y="{y_cursor:.1f}" width="{bar_w:.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{PALETTE.get(kind, _FALLBACK)}">'
                f"<title>{escape(day)} {escape(kind)}: {escape(usd(value))}</title></rect>"
            )
        if n <= 16 or i % max(1, n // 8) == 0:
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" '
                       f'font-size="10" text-anchor="middle" fill="#333">{escape(day[5:])}</text>')
    legend_x = left
    for kind in series:
        out.append(f'<rect x="{legend_x}" y="{height - 12}" width="10" height="10" '
                   f'fill="{PALETTE.get(kind, _FALLBACK)}"/>')
        out.append(f'<text x="{legend_x + 14}" y="{height - 3}" font-size="11" '
                   f'fill="#333">{escape(kind)}</text>')
        legend_x += 24 + 7 * len(kind)
    if not days:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                   'fill="#666">no usage in this period</text>')
    out.append("</svg>")
    return "".join(out)


def savings_by_lever(
    actual: float, naive: float, levers: Mapping[str, float], *, width: int = 760
) -> str:
    """Naive baseline vs actual cost, then one bar per lever (what it saved)."""
    rows = [("naive baseline", naive, NAIVE_COLOR, "naive"),
            ("actual cost", actual, ACTUAL_COLOR, "actual")]
    rows += [(name, value, LEVER_COLOR, f"lever-{name}") for name, value in levers.items()]
    row_h, label_w, pad = 28, 150, 8
    height = row_h * len(rows) + 2 * pad
    peak = max((abs(v) for _, v, _, _ in rows), default=0.0) or 1.0
    plot_w = width - label_w - 110
    out = [
        f'<svg id="savings-chart" role="img" aria-label="Savings by lever" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for i, (name, value, color, key) in enumerate(rows):
        y = pad + i * row_h
        w = plot_w * max(value, 0.0) / peak
        out.append(f'<text x="{label_w - 8}" y="{y + 18}" font-size="12" text-anchor="end" '
                   f'fill="#333">{escape(name)}</text>')
        out.append(
            f'<rect class="lever" data-lever="{escape(key)}" data-usd="{value:.6f}" '
            f'x="{label_w}" y="{y + 4}" width="{max(w, 0.5):.1f}" height="{row_h - 8}" '
            f'fill="{color}"><title>{escape(name)}: {escape(usd(value))}</title></rect>'
        )
        out.append(f'<text x="{label_w + max(w, 0.5) + 6:.1f}" y="{y + 18}" font-size="12" '
                   f'fill="#333">{escape(usd(value))}</text>')
    out.append("</svg>")
    return "".join(out)
