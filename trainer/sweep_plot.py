"""summary.png of a sweep: the monitored metric against each swept value, one panel per key (drawn with matplotlib)."""

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


def plot_summary(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Draw the panels (trainer/plots.py); None when no job finished with a value for a swept key."""
    from trainer.plots import sweep_png, write_png

    points = swept_points(rows)
    if not points:
        return None
    monitor = next((r.get("monitor") for r in rows if r.get("monitor")), "best")
    return write_png(sweep_png(points, str(monitor)), path)
