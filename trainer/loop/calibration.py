"""Temperature scaling: how far a probability of 0.9 is from being right 90% of the time, and the one
number that brings it closer.

A run fits, at its end, a temperature ``T`` on the val logits of best.pt (logits / T; one ``T`` for a
softmax over the classes, one per class for sigmoid outputs) by NLL with LBFGS, and reports three
figures before and after it:

- ECE, 15 equal-width bins: a softmax's top-label confidence against how often the top label is right;
  a sigmoid output's probability against how often its label is on (every image and class a pair);
- NLL: the mean negative log-likelihood of the true labels (cross-entropy; binary cross-entropy per
  pair for sigmoid outputs);
- Brier: the mean squared distance of the probabilities from the one-hot truth, summed over the
  classes for a softmax, per pair for sigmoid outputs (scikit-learn's ``brier_score_loss`` there).

The "after" figures are measured on images the temperature did not see: val in two interleaved halves,
each scored with the temperature fit on the other. The temperature kept (in best.pt, applied by
``predict`` and put into exported graphs) is fit on all of val. Dividing logits by a positive number
keeps every argmax and every sign, so accuracy, F1 and thresholded decisions at 0.5 do not change.
Segmentation is not calibrated.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.config.tasks import Task

log = logging.getLogger("trainer")

BINS = 15
MIN_IMAGES = 20  # fewer val images: no temperature (each half would fit on too little)
LIMITS = (0.05, 20.0)  # a temperature outside this is a fit on degenerate data: clamped


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, task: Task) -> torch.Tensor:
    """The temperature minimising the NLL of ``targets`` under ``logits / T``: shape ``[1]`` for a softmax,
    ``[K]`` (one per output) for sigmoid outputs."""
    logits, targets = logits.detach().double(), targets.detach()
    size = logits.shape[1] if task.sigmoid else 1
    log_t = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(logits / log_t.exp(), targets, task)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = log_t.detach().exp()
    t = torch.where(torch.isfinite(t), t, torch.ones_like(t))
    return t.clamp(*LIMITS).float()


def nll(logits: torch.Tensor, targets: torch.Tensor, task: Task) -> torch.Tensor:
    if task.sigmoid:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets.long())


def probabilities(logits: torch.Tensor, task: Task, temperature: torch.Tensor | None = None) -> torch.Tensor:
    """The task's probabilities of ``logits / temperature`` (no temperature: as they are)."""
    logits = logits.float()
    if temperature is not None:
        logits = logits / temperature.to(logits.device).view(1, -1)
    return task.probabilities(logits)


def confidences(probs: torch.Tensor, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """What the bins hold: (confidence, 1.0 where it was right) per image (softmax, its top label) or per
    image and output (sigmoid, the label on)."""
    if task.sigmoid:
        return probs.reshape(-1), targets.reshape(-1).float()
    conf, predicted = probs.max(dim=1)
    return conf, (predicted == targets.long()).float()


def reliability(conf: torch.Tensor, right: torch.Tensor, bins: int = BINS) -> list[tuple[float, float, int]]:
    """Per equal-width bin ``(lo, hi]`` (the first also holds 0): (mean confidence, accuracy, count)."""
    index = (torch.ceil(conf.double() * bins).long() - 1).clamp(0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        rows.append((float(conf[inside].mean()) if n else 0.0, float(right[inside].mean()) if n else 0.0, n))
    return rows


def figures(logits: torch.Tensor, targets: torch.Tensor, task: Task, temperature: torch.Tensor | None) -> dict:
    """ECE (15 bins), NLL and Brier of ``logits`` scaled by ``temperature``."""
    probs = probabilities(logits, task, temperature)
    scaled = logits.double() / (temperature.double().view(1, -1) if temperature is not None else 1.0)
    n = max(1, len(targets))
    rows = reliability(*confidences(probs, targets, task))
    ece = sum(count / max(1, sum(r[2] for r in rows)) * abs(acc - conf) for conf, acc, count in rows)
    if task.sigmoid:
        brier = float(((probs.double() - targets.double()) ** 2).mean())
    else:
        hot = F.one_hot(targets.long(), probs.shape[1]).double()
        brier = float(((probs.double() - hot) ** 2).sum(dim=1).sum() / n)
    return {"ece": round(float(ece), 6), "nll": round(float(nll(scaled, targets, task)), 6), "brier": round(brier, 6)}


def calibrate(logits: torch.Tensor, targets: torch.Tensor, task: Task) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reliability bins before and after, and what metrics.json keeps: the temperature fit on all of
    ``logits``, the figures before it, and the figures after it measured on held-out halves (even and odd
    images, each scored with the other half's temperature)."""
    halves = [torch.arange(start, len(targets), 2) for start in (0, 1)]
    temps = [fit_temperature(logits[h], targets[h], task) for h in halves]
    held_out = torch.empty_like(logits, dtype=torch.float64)
    for h, t in zip(halves, reversed(temps)):  # the even half with the odd half's temperature, and back
        held_out[h] = logits[h].double() / t.double().view(1, -1)
    temperature = fit_temperature(logits, targets, task)
    bins = {"before": reliability(*confidences(probabilities(logits, task), targets, task))}
    bins["after"] = reliability(*confidences(probabilities(held_out.float(), task), targets, task))
    return bins, {
        "temperature": [round(float(v), 6) for v in temperature],
        "images": len(targets),
        "before": figures(logits, targets, task, None),
        "after": figures(held_out.float(), targets, task, None),
        "after_on": "each half of val (even, odd images) with the temperature fit on the other half",
        "half_temperatures": [[round(float(v), 6) for v in t] for t in temps],
    }


def stored_temperature(state: dict[str, Any]) -> torch.Tensor | None:
    """The temperature a checkpoint keeps (None: none was fit); a malformed entry is treated as none."""
    values = (state.get("calibration") or {}).get("temperature")
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        return None
    return torch.tensor([float(v) for v in values])


class Scaled(torch.nn.Module):
    """``model``'s logits divided by the temperature: what an exported graph computes."""

    def __init__(self, model: torch.nn.Module, temperature: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", temperature.float().reshape(1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def calibrate_best(
    best: Path, state: dict[str, Any], batches: list[tuple[torch.Tensor, torch.Tensor]], task: Task
) -> dict[str, Any]:
    """Temperature scaling of the checkpoint ``best`` (its loaded ``state``) from its val ``batches`` of
    (logits, targets): the temperature into the checkpoint, reliability.png into its run folder; returns
    metrics.json's entry."""
    from trainer.runs.checkpoint import amend_checkpoint
    from trainer.runs.plots import reliability_png, write_png

    logits = torch.cat([out for out, _ in batches]) if batches else torch.empty(0)
    targets = torch.cat([y for _, y in batches]) if batches else torch.empty(0)
    if len(targets) < MIN_IMAGES:
        log.info("calibration: left out, the val split has %d readable images (needs %d)", len(targets), MIN_IMAGES)
        return {"skipped": f"{len(targets)} val images, fewer than {MIN_IMAGES}"}
    bins, result = calibrate(logits, targets, task)
    amend_checkpoint(best, {"calibration": result}, state)
    what = "how often the label is on" if task.sigmoid else "how often the top label is right"
    panels = {
        "before": (bins["before"], result["before"]["ece"]),
        "after (held out)": (bins["after"], result["after"]["ece"]),
    }
    run_dir = best.parent.parent
    write_png(reliability_png(panels, what), run_dir / "reliability.png")
    if any(v in LIMITS for v in result["temperature"]):
        log.info("calibration: a temperature is at its limit %s (the logits are nearly flat or saturated)", LIMITS)
    before, after = result["before"], result["after"]
    shown = ", ".join(f"{v:.3g}" for v in result["temperature"][:4]) + (
        " ..." if len(result["temperature"]) > 4 else ""
    )
    log.info(
        "calibration: temperature %s fit on %d val images, kept in best.pt; on held-out halves ECE %.4f -> %.4f, "
        "NLL %.4f -> %.4f, Brier %.4f -> %.4f (reliability.png)",
        shown,
        result["images"],
        before["ece"],
        after["ece"],
        before["nll"],
        after["nll"],
        before["brier"],
        after["brier"],
    )
    return result
