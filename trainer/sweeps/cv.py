"""The cross-validation summary of a sweep over ``data.fold``: per setting (the other swept values),
the mean and standard deviation over its folds of every validation metric at each fold's best epoch,
written to cv.json and printed as one line per setting."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from trainer.config.overrides import key_of, value_of


def cross_validation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per setting with two or more finished folds (empty when the sweep has no data.fold)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        swept = str(row.get("swept") or "").split()
        if not any(key_of(o) == "data.fold" for o in swept) or row.get("status") != "finished":
            continue
        setting = " ".join(o for o in swept if key_of(o) != "data.fold")
        groups.setdefault(setting, []).append(row)
    out = []
    for setting, members in sorted(groups.items()):
        per_fold = [_best_epoch(row) for row in members]
        per_fold = [p for p in per_fold if p is not None]
        if len(per_fold) < 2:
            continue
        per_fold.sort(key=lambda p: p["fold"])
        metrics = sorted({k for p in per_fold for k in p["metrics"]})
        values = {k: [p["metrics"][k] for p in per_fold if k in p["metrics"]] for k in metrics}
        out.append(
            {
                "setting": setting,
                "folds": len(per_fold),
                "monitor": members[0].get("monitor"),
                "mean": {k: statistics.fmean(v) for k, v in values.items()},
                "std": {k: statistics.pstdev(v) for k, v in values.items()},  # numpy's default, over the folds
                "per_fold": per_fold,
            }
        )
    return out


def _best_epoch(row: dict[str, Any]) -> dict[str, Any] | None:
    """A finished fold's validation metrics at its best epoch."""
    fold = next((value_of(o) for o in str(row["swept"]).split() if key_of(o) == "data.fold"), None)
    try:
        m = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        best = m["history"][int(m["best_epoch"]) - 1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    metrics = {k: float(v) for k, v in best.items() if k.startswith("val/") and isinstance(v, (int, float))}
    return {"fold": int(fold) if fold and fold.isdigit() else fold, "run_dir": row["run_dir"], "metrics": metrics}


def write_cv(rows: list[dict[str, Any]], sweep_dir: Path) -> list[dict[str, Any]]:
    """cv.json in the sweep folder, when the sweep went over folds; the entries it holds."""
    entries = cross_validation(rows)
    if entries:
        (sweep_dir / "cv.json").write_text(json.dumps(entries, indent=2))
    return entries


def cv_line(entry: dict[str, Any]) -> str:
    monitor = entry.get("monitor") or "val/loss"
    parts = [f"{k} {entry['mean'][k]:.4f} ± {entry['std'][k]:.4f}" for k in sorted(entry["mean"]) if k != monitor]
    head = f"cross-validation over {entry['folds']} folds" + (f" ({entry['setting']})" if entry["setting"] else "")
    return (
        f"{head}: {monitor} {entry['mean'].get(monitor, float('nan')):.4f} ± {entry['std'].get(monitor, float('nan')):.4f}; "
        + ", ".join(parts)
    )
