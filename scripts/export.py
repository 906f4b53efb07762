"""Export a checkpoint's model weights as .safetensors, with its class names and preprocessing as JSON.

    python scripts/export.py outputs/<date>/<time>/checkpoints/best.pt [--out DIR]

Writes DIR/model.safetensors (tensors only: loading it can run no code) and DIR/model.json
(architecture, class names, input size, mean, std, interpolation, crop_pct, weights sha256).
Train from it again with `train model.weights=DIR/model.safetensors`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from trainer.checkpoint import load_checkpoint
from trainer.errors import UserError
from trainer.targets import check_targets


def export(checkpoint: str, out: Path, trusted: tuple[str, ...] = ()) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg.allow_targets = list(trusted)  # a stored list is not trusted: only the one given here
    check_targets(cfg, extra=trusted, where=f"config stored in {checkpoint}")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    save_file(tensors, str(weights), metadata={"classes": json.dumps(state["classes"])})
    data = cfg.get("data", {})
    meta = {
        "model": {
            "name": cfg.model.name,
            "source": cfg.model.source,
            "head": OmegaConf.to_container(cfg.model.get("head") or {}, resolve=True),
        },
        "classes": list(state["classes"]),
        "preprocessing": state.get("input_spec")
        or {"image_size": data.get("image_size"), "crop_pct": data.get("crop_pct")},
        "epoch": state["epoch"],
        "checkpoint": str(checkpoint),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "versions": state.get("versions", {}),
    }
    meta_path = out / "model.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return weights, meta_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument(
        "--allow-targets",
        nargs="*",
        default=[],
        help="packages whose _target_ entries you trust, e.g. my_parts. (a list stored in the run is not trusted)",
    )
    ap.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "export"
    try:
        weights, meta = export(args.checkpoint, out, tuple(args.allow_targets))
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {weights} and {meta}")


if __name__ == "__main__":
    main()
