"""What a run records: metrics.json, metrics.csv, curves.png and the confusion matrix PNG in its folder,
and scalars, images and hparams through its loggers (trainer/runs/loggers.py).

Rank 0 writes; other ranks get a :class:`NullTracker` whose methods do nothing, chosen at build
time so the loop never asks which rank it is on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from trainer.runs.checkpoint import atomic_write_bytes
from trainer.runs.loggers import Sink, TensorBoardSink

log = logging.getLogger("trainer")


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config flattened to scalars for TensorBoard's HParams tab."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# what every run's HParams row shows first; the keys given on the command line follow
HPARAM_KEYS = ("model.name", "data.name", "optimizer._target_", "optimizer.lr", "data.batch_size", "trainer.epochs")


def chosen_hparams(flat: dict[str, Any], overridden: list[str] | None) -> dict[str, Any]:
    """The HParams tab's columns: the essentials, then what this run's command line set (a sweep's
    varied keys among them), instead of every one of the ~60 config keys in alphabetical order."""
    if overridden is None:
        return flat
    keys = list(HPARAM_KEYS) + [k for k in overridden if k not in HPARAM_KEYS]
    chosen = {k: flat[k] for k in keys if k in flat}
    for group in overridden:  # a group option (optimizer=sgd): its flattened keys are not named; its name is
        if group not in flat and f"{group}._target_" in flat:
            chosen[f"{group}._target_"] = flat[f"{group}._target_"]
    return chosen


class Tracker:
    """The run folder's summary files (metrics.json, metrics.csv, curves.png, confusion_matrix.png), and
    every record handed on to the run's loggers (trainer/runs/loggers.py; TensorBoard unless told)."""

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        sinks: list[Sink] | None = None,
    ):
        self.run_dir, self.hparams = Path(run_dir), hparams
        self.mean, self.std = mean, std
        self.images_logged = False
        self.sinks = [TensorBoardSink(self.run_dir)] if sinks is None else sinks
        self.curves_drawn: tuple[Any, ...] | None = None  # what curves.png shows now: drawn again only on a change

    def resumed_at(self, step: int, images_logged: bool, ids: Any = None) -> None:
        """Resumed at ``step``: what a killed session logged after it is dropped where a logger can, and each
        logger continues its run of before (``ids``: what ``ids()`` returned then, from the checkpoint)."""
        self.images_logged = images_logged
        ids = ids if isinstance(ids, dict) else {}  # a checkpoint from elsewhere: only plain short ids are used
        for sink in self.sinks:
            old = ids.get(sink.name)
            sink.resume(step, str(old) if isinstance(old, str) and 0 < len(old) <= 64 and old.isalnum() else None)

    def ids(self) -> dict[str, str]:
        """Each logger's run id (MLflow run, W&B run) for the checkpoint."""
        return {s.name: rid for s in self.sinks if (rid := s.run_id())}

    def log_images(self, x: torch.Tensor, step: int) -> None:
        """The first training batch as TensorBoard sees it, de-normalized (once per run)."""
        if self.images_logged or x.ndim != 4:
            return

        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        imgs = (x[:32].float() * std + mean).clamp(0, 1)
        grid = make_grid(imgs.cpu(), nrow=8)
        for sink in self.sinks:
            sink.grid("train/images", grid, step)
        self.images_logged = True

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.scalars(values, step)

    def log_per_class(self, per_class: dict[str, dict[str, float]], step: int) -> None:
        flat = {f"val_per_class/{m}/{name}": v for m, values in per_class.items() for name, v in values.items()}
        self.log_scalars(flat, step)

    def log_confusion(self, confusion: torch.Tensor, classes: list[str], step: int, save_png: bool) -> None:
        """The confusion matrix as an image for the loggers; as confusion_matrix.png too when it is the best epoch."""
        from trainer.runs.plots import confusion_png, png_array

        png = confusion_png(confusion, classes)
        if self.sinks:
            image = png_array(png)
            for sink in self.sinks:
                sink.image("val/confusion_matrix", image, step)
        if save_png:
            atomic_write_bytes(self.run_dir / "confusion_matrix.png", png)

    def write_metrics(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_dir / "metrics.json", json.dumps(summary, indent=2).encode())
        history = summary.get("history") or []
        if history:  # the same per-epoch values as a table: one row per epoch, every metric
            import io

            from trainer.runs.csvcells import SafeDictWriter

            columns = list(dict.fromkeys(k for row in history for k in row))
            buf = io.StringIO()
            writer = SafeDictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
            atomic_write_bytes(self.run_dir / "metrics.csv", buf.getvalue().encode())
            monitor = str(summary.get("monitor") or "val/loss")
            shown = (len(history), json.dumps(history[-1], sort_keys=True), monitor, summary.get("best_epoch"))
            if shown != self.curves_drawn:  # the run's end writes the summary again: the same curves, not redrawn
                from trainer.runs.plots import curves_png  # matplotlib: at an epoch's end, never in the step loop

                atomic_write_bytes(self.run_dir / "curves.png", curves_png(history, monitor, summary.get("best_epoch")))
                self.curves_drawn = shown

    def write_hparams(self, last: dict[str, float], best: float | None, epoch: int) -> None:
        metrics = {"hparam/best": float(best) if best is not None else float("nan")}
        metrics.update({"hparam/" + k[4:]: float(v) for k, v in last.items() if k.startswith("val/")})
        for sink in self.sinks:
            sink.hparams(self.hparams, metrics, epoch)

    def finish(self, summary: dict[str, Any]) -> None:
        """The finished run's files as the loggers' artifacts, with the best checkpoint's path."""
        files = [self.run_dir / n for n in ("metrics.json", "metrics.csv", "curves.png", "confusion_matrix.png")]
        for sink in self.sinks:
            sink.finish(files, summary)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class NullTracker(Tracker):
    """The tracker of ranks > 0: rank 0 alone writes."""

    def log_images(self, x: torch.Tensor, step: int) -> None:
        pass

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def log_per_class(self, per_class: dict[str, dict[str, float]], step: int) -> None:
        pass

    def log_confusion(self, confusion: torch.Tensor, classes: list[str], step: int, save_png: bool) -> None:
        pass

    def write_metrics(self, summary: dict[str, Any]) -> None:
        pass

    def write_hparams(self, last: dict[str, float], best: float | None, epoch: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def print_summary(summary: dict[str, Any]) -> None:
    """The last lines of a run's log (from its metrics.json summary): best value, time, where the run and
    its best checkpoint are."""
    best = "n/a" if summary["best"] is None else f"{summary['best']:.4f}"
    log.info(
        "done: best %s %s at epoch %s | training time %s (this session %s)",
        summary["monitor"],
        best,
        summary["best_epoch"],
        _fmt_time(summary["train_time_s"]),
        _fmt_time(summary["wall_time_s"]),
    )
    log.info("run folder: %s", summary["run_dir"])
    log.info("best checkpoint: %s", summary["best_checkpoint"])


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
