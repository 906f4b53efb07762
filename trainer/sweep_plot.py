"""summary.png of a sweep: the monitored metric against each swept value, one panel per key (Pillow only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def swept_points(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """key -> [(value, best)] over the jobs that finished with a number."""
    points: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        best = row.get("best")
        if best is None or (isinstance(best, float) and math.isnan(best)):
            continue
        for override in str(row.get("swept") or "").split():
            key, _, value = override.partition("=")
            points.setdefault(key.lstrip("+~"), []).append((value, float(best)))
    return points


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def plot_summary(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Draw the panels; None when no job finished with a value for a swept key."""
    from PIL import Image, ImageDraw

    points = swept_points(rows)
    if not points:
        return None
    monitor = next((r.get("monitor") for r in rows if r.get("monitor")), "best")
    pw, ph, left, top, bottom = 380, 280, 64, 34, 46
    img = Image.new("RGB", (pw * len(points), ph), "white")
    draw = ImageDraw.Draw(img)
    for panel, (key, pts) in enumerate(sorted(points.items())):
        x0 = panel * pw
        nums = [_number(v) for v, _ in pts]
        numeric = all(n is not None for n in nums)
        log_x = numeric and min(nums) > 0 and max(nums) / min(nums) >= 10  # type: ignore[type-var, operator]
        if numeric:
            xs = [math.log10(n) if log_x else n for n in nums]  # type: ignore[arg-type]
        else:
            cats = sorted({v for v, _ in pts})
            xs = [float(cats.index(v)) for v, _ in pts]
        ys = [b for _, b in pts]
        xlo, xhi = min(xs), max(xs)
        ylo, yhi = min(ys), max(ys)
        if xhi == xlo:
            xlo, xhi = xlo - 1, xhi + 1
        if yhi == ylo:
            ylo, yhi = ylo - 0.05, yhi + 0.05
        w, h = pw - left - 16, ph - top - bottom

        def to_px(x: float, y: float) -> tuple[float, float]:
            return (x0 + left + (x - xlo) / (xhi - xlo) * w, top + h - (y - ylo) / (yhi - ylo) * h)

        draw.rectangle([x0 + left, top, x0 + left + w, top + h], outline=(160, 160, 160))
        draw.text((x0 + left, 8), f"{monitor} vs {key}" + (" (log x)" if log_x else ""), fill="black")
        for frac in (0.0, 0.5, 1.0):
            y = ylo + frac * (yhi - ylo)
            draw.text((x0 + 4, to_px(xlo, y)[1] - 6), f"{y:.4g}", fill="black")
        labels = sorted(set(zip(xs, (v for v, _ in pts))))
        for x, label in labels[:: max(1, len(labels) // 6)]:
            px = to_px(x, ylo)[0]
            draw.text((px - 12, top + h + 6), label[:10], fill="black")
        order = sorted(zip(xs, ys))
        if numeric and len(order) > 1:
            draw.line([to_px(x, y) for x, y in order], fill=(120, 150, 220), width=1)
        for x, y in zip(xs, ys):
            cx, cy = to_px(x, y)
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(30, 80, 200))
        draw.text((x0 + left, ph - 18), key, fill="black")
    img.save(path)
    return path
