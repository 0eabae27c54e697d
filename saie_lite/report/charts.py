"""Small charts as inline SVG, drawn by hand: a line chart and stacked bars.

Inline SVG is part of the page (no image to fetch, no library at view time), scales with
the window and stays readable when printed. Names and titles go through ``esc``.
"""

from __future__ import annotations

import math

from saie_lite.report.page import esc

W, H = 540, 270
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 46, 40
COLOURS = ["#3b73c8", "#d1493f", "#2e9e57", "#c98a12", "#7a4fb8", "#2a9aa5", "#8d6e63"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values spanning [lo, hi]."""
    span = hi - lo
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _span(values: list[float], lo: float | None, hi: float | None) -> tuple[float, float]:
    a = min(values) if lo is None else lo
    b = max(values) if hi is None else hi
    if b - a < 1e-12:  # one value: a band around it
        pad = abs(a) * 0.1 or 1.0
        a, b = (a - pad if lo is None else a), (b + pad if hi is None else b + pad)
    return a, b


def _fmt(v: float, percent: bool) -> str:
    return f"{100 * v:.0f}%" if percent else f"{v:.4g}"


def _frame(title: str, x_label: str, y_label: str, xs: tuple, ys: tuple, percent: bool):
    """The chart's frame: title, axes, grid lines and tick labels; and the mapping of data
    to pixels."""
    (x0, x1), (y0, y1) = xs, ys
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw if x1 > x0 else LEFT + pw / 2

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
        f"{esc(title)}</text>"
    ]
    for t in _ticks(y0, y1):
        y = py(t)
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7ec"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#5b6576">{esc(_fmt(t, percent))}</text>'
        )
    if x1 > x0:
        for t in _ticks(x0, x1, 6):
            if t == int(t):  # updates are whole numbers
                x = px(t)
                out.append(
                    f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle" font-size="11" '
                    f'fill="#5b6576">{int(t)}</text>'
                )
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + ph}" stroke="#9aa3b2"/>'
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + ph}" y2="{TOP + ph}" stroke="#9aa3b2"/>'
        f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle" font-size="12">'
        f"{esc(x_label)}</text>"
        f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'font-size="12">{esc(y_label)}</text>'
    )
    return out, px, py


def _legend(names: list[str]) -> str:
    out, x = [], LEFT + 6
    for i, name in enumerate(names):
        c = COLOURS[i % len(COLOURS)]
        out.append(
            f'<rect x="{x}" y="{TOP - 22}" width="10" height="10" fill="{c}"/>'
            f'<text x="{x + 14}" y="{TOP - 13}" font-size="11">{esc(name)}</text>'
        )
        x += 22 + 7 * len(name)
    return "".join(out)


def _svg(parts: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{esc(label)}" font-family="system-ui, sans-serif">{"".join(parts)}</svg>'
    )


def _empty(title: str, why: str) -> str:
    return _svg(
        [
            f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
            f"{esc(title)}</text>",
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="13" fill="#5b6576">'
            f"{esc(why)}</text>",
        ],
        title,
    )


def line_chart(
    series: list[tuple[str, list[tuple[float, float]]]],
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float | None, float | None] = (None, None),
    percent: bool = False,
) -> str:
    """One line per (name, [(x, y), ...]); points that are not finite numbers are left
    out (a diverged loss), and the title says how many."""
    clean, dropped = [], 0
    for name, pts in series:
        good = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        dropped += len(pts) - len(good)
        clean.append((name, good))
    if dropped:
        title += f" ({dropped} non-finite not drawn)"
    points = [p for _, pts in clean for p in pts]
    if not points:
        return _empty(title, "nothing recorded yet")
    xs = _span([x for x, _ in points], None, None) if len({x for x, _ in points}) > 1 else (0, 0)
    ys = _span([y for _, y in points], *y_range)
    out, px, py = _frame(title, x_label, y_label, xs, ys, percent)
    for i, (name, pts) in enumerate(clean):
        c = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        if len(pts) <= 80:  # dots with their values on hover, while they stay apart
            for x, y in pts:
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{c}">'
                    f"<title>{esc(name)}: update {x:g}, {esc(_fmt(y, percent))}</title></circle>"
                )
    if len(clean) > 1:
        out.append(_legend([n for n, _ in clean]))
    return _svg(out, title)


def stacked_bars(
    xs: list[int], parts: list[tuple[str, list[float]]], title: str, x_label: str, y_label: str
) -> str:
    """One bar per x, its parts stacked in order (the time split of each update)."""
    if not xs:
        return _empty(title, "nothing recorded yet")
    totals = [sum(p[1][i] for p in parts) for i in range(len(xs))]
    span = (min(xs) - 0.5, max(xs) + 0.5)
    out, px, py = _frame(title, x_label, y_label, span, _span(totals + [0.0], 0.0, None), False)
    width = max(0.6, (px(span[0] + 1) - px(span[0])) * 0.8)
    for i, x in enumerate(xs):
        base = 0.0
        for k, (name, values) in enumerate(parts):
            v = values[i]
            if v <= 0:
                continue
            top, bottom = py(base + v), py(base)
            out.append(
                f'<rect x="{px(x) - width / 2:.2f}" y="{top:.2f}" width="{width:.2f}" '
                f'height="{max(0.3, bottom - top):.2f}" fill="{COLOURS[k % len(COLOURS)]}">'
                f"<title>update {x}: {esc(name)} {v:.3g} s</title></rect>"
            )
            base += v
    out.append(_legend([n for n, _ in parts]))
    return _svg(out, title)
