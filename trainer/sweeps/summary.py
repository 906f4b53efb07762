"""Summary of a multirun: one row per job, best first, printed and saved as CSV and Markdown, and a plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.config.overrides import key_of, value_of
from trainer.runs.csvcells import SafeDictWriter
from trainer.sweeps.race import race_table

log = logging.getLogger(__name__)


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of the sweep (those holding .hydra/overrides.yaml), best first."""
    from trainer.config.untrusted import read_yaml
    from trainer.errors import UserError

    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        try:
            overrides = read_yaml(overrides_file) or []
        except UserError as e:
            log.warning("sweep summary: skipping %s", e)
            continue
        if not isinstance(overrides, list):
            log.warning("sweep summary: skipping %s: not a list of overrides", overrides_file)
            continue
        overrides = [str(o) for o in overrides]
        row: dict[str, Any] = {
            "job": job_dir.name,
            "overrides": " ".join(overrides),
            "monitor": "",
            "best": None,
            "best_epoch": None,
            "status": "failed",
            "run_dir": str(job_dir),
            "error": "",
        }
        try:
            m = json.loads((job_dir / "metrics.json").read_text())
            status = m.get("status") or ("finished" if m.get("finished") else "unfinished")
            row.update(
                monitor=m.get("monitor", ""),
                best=m.get("best"),
                best_epoch=m.get("best_epoch"),
                status=status,
                mode=m.get("mode", "max"),
                error=(m.get("error") or "").splitlines()[0][:300] if m.get("error") else "",
            )
        except (OSError, ValueError):
            row["error"] = "no metrics.json (the job died before its first epoch ended)"
        rows.append(row)

    add_race(rows, sweep_dir)  # a race: its winner first, then by the epoch each trial reached
    rows.sort(key=lambda r: (not r.get("winner"), -int(r.get("reached") or 0), *order(r)))
    # The overrides that differ between jobs: what the sweep varied, shown first.
    values: dict[str, set[str]] = {}
    for row in rows:
        for o in row["overrides"].split():
            values.setdefault(key_of(o), set()).add(o)
    keys_per_row = [{key_of(o) for o in r["overrides"].split()} for r in rows]
    varied = {k for k, v in values.items() if len(v) > 1 or any(k not in keys for keys in keys_per_row)}
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["swept"] = " ".join(o for o in row["overrides"].split() if key_of(o) in varied)
    return rows


def order(row: dict[str, Any]) -> tuple[int, float]:
    """Jobs with a value first, best first."""
    best = row["best"]
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return (1, 0.0)
    return (0, -best if row.get("mode", "max") == "max" else best)


def add_race(rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    """A race's columns (the epoch reached, the value at each rung, why it stopped), without its own keys
    (its storage, round and clock are not what it compared)."""
    race = race_table(sweep_dir)
    for row in rows:
        row.update(race.get(row["job"], {}))
        if race:
            row["overrides"] = " ".join(o for o in row["overrides"].split() if not key_of(o).startswith("race."))


# jobs of the multirun that just ended with status failed (the `train` command exits 3 when there are any)
FAILED_JOBS: list[str] = []

COLUMNS = ["rank", "swept", "monitor", "best", "best_epoch", "status", "error", "run_dir", "overrides"]


RACE_COLUMNS = ["rank", "swept", "monitor", "best", "reached", "at_rungs", "stopped", "status", "run_dir", "overrides"]


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """A race's summary adds the epoch each trial reached, its value at each rung and why it stopped."""
    return RACE_COLUMNS if any("at_rungs" in r for r in rows) else COLUMNS


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = collect_rows(sweep_dir)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = SafeDictWriter(f, fieldnames=columns_of(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.md").write_text(to_markdown(rows))

    plot_summary(rows, sweep_dir / "summary.png")
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "-" if v is None or v == "" else str(v).replace("|", "\\|")

    columns = columns_of(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, summarise its jobs in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        FAILED_JOBS[:] = [r["run_dir"] for r in rows if r["status"] == "failed"]
        print(
            f"\nsweep summary ({len(rows)} runs, best first): {sweep_dir}/summary.md"
            + (f", plot: {sweep_dir}/summary.png" if (sweep_dir / "summary.png").is_file() else "")
        )
        print(to_markdown(rows))
        from trainer.sweeps.cv import cv_line, write_cv

        for entry in write_cv(rows, sweep_dir):  # a sweep over data.fold: mean and spread over the folds
            print(cv_line(entry) + f"  ({sweep_dir}/cv.json)")


def swept_points(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """key -> [(value, best)] over the jobs that finished with a number."""
    points: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        best = row.get("best")
        if best is None or (isinstance(best, float) and math.isnan(best)):
            continue
        for override in str(row.get("swept") or "").split():
            points.setdefault(key_of(override), []).append((value_of(override), float(best)))
    return points


def plot_summary(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """summary.png: the monitored metric against each swept value, one panel per key (trainer/runs/plots.py);
    None when no job finished with a value for a swept key."""
    from trainer.runs.plots import sweep_png, write_png

    points = swept_points(rows)
    if not points:
        return None
    monitor = next((r.get("monitor") for r in rows if r.get("monitor")), "best")
    return write_png(sweep_png(points, str(monitor)), path)
