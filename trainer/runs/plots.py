"""Plots people read, drawn with matplotlib (Agg, imported only when a plot is drawn): a run's curves,
a sweep's metric against each swept value, a confusion matrix, learning-rate curves, reliability
diagrams, a data report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def sweep_png(points: dict[str, list[tuple[str, float]]], monitor: str) -> bytes:
    """One panel per swept key: the monitored metric against its values (log x over a decade or more)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(5.2 * len(points), 4.0), squeeze=False)
    for ax, (key, pts) in zip(axes[0], sorted(points.items())):
        nums = [_number(v) for v, _ in pts]
        ys = [b for _, b in pts]
        if all(n is not None for n in nums):
            xs = [float(n) for n in nums if n is not None]
            order = sorted(zip(xs, ys))
            ax.plot([x for x, _ in order], [y for _, y in order], "-", color="#9db4e8", zorder=1)
            ax.scatter(xs, ys, color="#1f4fc8", zorder=2)
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            cats = sorted({v for v, _ in pts})
            ax.scatter([cats.index(v) for v, _ in pts], ys, color="#1f4fc8")
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_title(f"{monitor} vs {key}")
        ax.set_xlabel(key)
        ax.set_ylabel(monitor)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def race_png(curves: dict[str, list[tuple[int, float]]], pruned: set[str], winner: str | None, monitor: str) -> bytes:
    """A race: each trial's monitored value per epoch; a pruned trial's curve ends in a cross where it
    stopped, the winner's is drawn bold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for job, points in sorted(curves.items(), key=lambda kv: kv[0] == winner):
        xs, ys = [e for e, _ in points], [v for _, v in points]
        if job == winner:
            ax.plot(xs, ys, "-o", color="#1f4fc8", linewidth=2.5, zorder=3, label=f"{job} (winner)")
            continue
        ax.plot(xs, ys, "-", color="#b0b0b0" if job in pruned else "#7a9a6a", linewidth=1, zorder=1)
        if job in pruned:
            ax.scatter(xs[-1:], ys[-1:], marker="x", color="#c83232", zorder=2)
        ax.annotate(job, (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 0), fontsize=7, color="#555555")
    ax.scatter([], [], marker="x", color="#c83232", label="pruned")
    ax.set_xlabel("epoch")
    ax.set_ylabel(monitor)
    ax.set_title("race: every configuration's curve (x: pruned there)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def confusion_png(cm: Any, classes: list[str]) -> bytes:
    """Rows: true class, columns: predicted; colour by row share, counts written in the cells."""
    plt = _pyplot()
    counts = cm.long().tolist() if hasattr(cm, "long") else [list(map(int, r)) for r in cm]
    n = len(counts)
    labels = [str(c) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    share = [[c / max(1, sum(row)) for c in row] for row in counts]
    side = min(16.0, max(4.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
        ax.set_yticks(range(n), labels)
        size = 10 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=size,
                        color="white" if share[i][j] > 0.6 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return _png(fig)


def png_array(png: bytes) -> Any:
    """A PNG as an HWC uint8 array (for TensorBoard's add_image)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def lr_png(curves: dict[str, list[float]], steps_per_epoch: int, title: str) -> bytes:
    """The learning rate of each parameter group per optimizer step, epochs marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for name, values in curves.items():
        ax.plot(range(len(values)), values, label=name)
    total = max((len(v) for v in curves.values()), default=0)
    if steps_per_epoch > 0 and total // steps_per_epoch <= 60:
        for e in range(steps_per_epoch, total, steps_per_epoch):
            ax.axvline(e, color="0.85", lw=0.8, zorder=0)
    values = [v for vs in curves.values() for v in vs if v > 0]
    if values and max(values) / min(values) >= 100:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step (grey lines: epochs)")
    ax.set_ylabel("learning rate")
    ax.set_title(title if len(title) <= 100 else title[:97] + "...")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="best", fontsize=8)
    return _png(fig)


def lr_find_png(lrs: list[float], smoothed: list[float], suggestion: float) -> bytes:
    """The range test: smoothed training loss against the learning rate (log x), the suggestion marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", ls="--", lw=1, label=f"suggested lr {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (base group)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def curves_png(history: list[dict[str, Any]], monitor: str, best_epoch: int | None) -> bytes:
    """A run at a glance, one point per epoch: train and val loss, the monitored metric (its best
    epoch marked) and the learning rate."""
    plt = _pyplot()
    epochs = [int(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    panels = [
        ("loss", [("train/loss", "train"), ("val/loss", "val")], False),
        (monitor, [(monitor, monitor)], False),
        ("learning rate (head) at the epoch's end", [("lr", "lr")], True),
    ]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (title, series, log) in zip(axes, panels):
        for key, label in series:
            points = [(e, row[key]) for e, row in zip(epochs, history) if isinstance(row.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
        if title == monitor and best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best: epoch {best_epoch}")
        if log and all(isinstance(r.get("lr"), (int, float)) and r["lr"] > 0 for r in history):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    return _png(fig)


def image_grid_png(images: list[Any], titles: list[str], empty: str = "") -> bytes:
    """uint8 ``(3, H, W)`` images in a grid of four columns, each under its title (nearest upscaling:
    small images stay sharp at 100%)."""
    plt = _pyplot()
    cols = 4
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if not images:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
    return _png(fig)


def write_png(png: bytes, path: Path) -> Path:
    from trainer.runs.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), png)
    return Path(path)


def segmentation_rows_png(rows: list[tuple[Any, Any, Any, str]], names: list[str], ignore_index: int | None) -> bytes:
    """One row per ``(image uint8 (3, H, W), true mask, predicted mask, title)``: the image and both masks
    side by side, classes in one fixed palette named in a legend (ignored pixels grey)."""
    import numpy as np
    from matplotlib.patches import Patch

    plt = _pyplot()
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, axes = plt.subplots(max(1, len(rows)), 3, figsize=(7.5, 2.6 * max(1, len(rows))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def coloured(mask: Any) -> Any:
        m = np.asarray(mask, dtype=np.int64)
        rgb = palette(m % palette.N)[..., :3]
        if ignore_index is not None:
            rgb[m == ignore_index] = 0.5
        return rgb

    for (image, true, pred, title), (a, b, c) in zip(rows, axes):
        a.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        a.set_title(title, fontsize=9)
        b.imshow(coloured(true), interpolation="nearest")
        b.set_title("true", fontsize=9)
        c.imshow(coloured(pred), interpolation="nearest")
        c.set_title("predicted", fontsize=9)
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=12)
    handles = [Patch(color=palette(i % palette.N), label=n) for i, n in enumerate(names)]
    axes[0][1].legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(names), 5),
        fontsize=9,
        bbox_to_anchor=(0.5, 1.12),
        frameon=False,
    )
    return _png(fig)


def reliability_png(panels: dict[str, tuple[list[tuple[float, float, int]], float]], what: str) -> bytes:
    """Reliability diagrams side by side: per confidence bin, how often it was right (bars) against the
    diagonal a calibrated model would sit on, with the share of images in each bin beneath.
    ``panels``: title -> (bins as (mean confidence, accuracy, count), ECE)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    for col, (title, (rows, ece)) in enumerate(panels.items()):
        top, bottom = axes[0][col], axes[1][col]
        width = 1.0 / len(rows)
        lefts = [i * width for i in range(len(rows))]
        total = max(1, sum(n for _, _, n in rows))
        accs = [acc if n else 0.0 for _, acc, n in rows]
        top.bar(lefts, accs, width=width, align="edge", color="#1f4fc8", edgecolor="white", label="accuracy")
        gaps = [abs(conf - acc) if n else 0.0 for conf, acc, n in rows]
        lows = [min(conf, acc) for conf, acc, _ in rows]
        top.bar(
            lefts, gaps, bottom=lows, width=width, align="edge", color="#e8a09d", alpha=0.7, label="gap to confidence"
        )
        top.plot([0, 1], [0, 1], "--", color="#555555", linewidth=1)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{title}: ECE {ece:.3f}")
        top.set_ylabel(what)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(lefts, [n / total for _, _, n in rows], width=width, align="edge", color="#9db4e8")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("share of images")
    fig.tight_layout()
    return _png(fig)


def data_report_png(counts: dict[str, dict[str, int]] | None, imbalance: float | None, pairs: list[Any]) -> bytes:
    """check-data's picture: images per class in each split, then the closest train/val pairs side by
    side. ``pairs``: (val image, train image, distance in bits), uint8 ``(3, H, W)`` images."""
    plt = _pyplot()
    rows = 1 + max(1, -(-len(pairs) // 4))
    fig = plt.figure(figsize=(12, 2.6 * rows + 1))
    grid = fig.add_gridspec(rows, 8)
    ax = fig.add_subplot(grid[0, :])
    if counts:
        classes = list(counts["train"])
        xs = list(range(len(classes)))
        ax.bar([x - 0.2 for x in xs], [counts["train"][c] for c in classes], width=0.4, label="train", color="#1f4fc8")
        ax.bar([x + 0.2 for x in xs], [counts["val"][c] for c in classes], width=0.4, label="val", color="#e8a09d")
        many = len(classes) > 8
        ax.set_xticks(xs, classes, rotation=30 if many else 0, ha="right" if many else "center")
        ax.legend()
        ax.set_title(f"images per class (imbalance {imbalance}x)")
    else:
        ax.axis("off")
    for k, (val_img, train_img, d) in enumerate(pairs):
        r, c = 1 + k // 4, (k % 4) * 2
        for j, (img, title) in enumerate(((val_img, f"val, {d} bits from"), (train_img, "train"))):
            a = fig.add_subplot(grid[r, c + j])
            a.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            a.set_title(title, fontsize=8)
            a.axis("off")
    fig.suptitle("closest train/val pairs by perceptual hash (0 bits: the same picture)", y=0.99)
    fig.tight_layout()
    return _png(fig)
