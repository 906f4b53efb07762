"""`export-model`: a trained model as a file other tools load, checked against torch before it is kept.

    export-model checkpoint=<run folder | .pt> [format=safetensors|onnx|torchscript] [out=DIR]

Every format writes DIR/config.json in timm's pretrained-config form (architecture, num_classes,
label_names, input_size, interpolation, mean, std, crop_pct) beside the weights:

- safetensors: DIR/model.safetensors, tensors only. For a timm model with timm's own head,
  ``timm.create_model(arch, num_classes=N, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
  rebuilds it; ``train model.weights=DIR/model.safetensors`` starts a new run from it.
- onnx: DIR/model.onnx with a dynamic batch axis, run by onnxruntime on a batch of 3 and compared
  with torch (the largest logit difference is printed; over 1e-4 is an error).
- torchscript: DIR/model.pt traced with torch.jit.trace, compared the same way.

Files are written mode 644. Default DIR: the run folder's export/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError
from trainer.models.trained import Trained, load_trained
from trainer.use.command import parse_args, run_command, trusted
from trainer.use.outputs import atomic_file, check_folder, json_with_keys

KEYS = {"checkpoint": None, "format": "safetensors", "out": "", "allow_targets": ""}
TOLERANCE = 1e-4
_EXPORT_CONFIG = json_with_keys("architecture", "label_names", "pretrained_cfg")
# an existing weights file is replaced only beside the config.json of an export
_EXPORT_OF = lambda p: (p.parent / "config.json").is_file() and _EXPORT_CONFIG(p.parent / "config.json")  # noqa: E731


def timm_config(trained: Trained) -> dict[str, Any]:
    """timm's pretrained-config form, for the loaders that read it (timm, Hugging Face)."""
    spec, stored = trained.input_spec, trained.config  # the config the checkpoint was trained with
    num_outputs = 1 if trained.task == "binary" else len(trained.classes)
    pretrained_cfg = {
        "input_size": [3, int(spec["size"]), int(spec["size"])],
        "interpolation": spec.get("interpolation", "bilinear"),
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
        "crop_pct": float(spec.get("crop_pct", 1.0)),
        "num_classes": num_outputs,
        "label_names": list(trained.classes),
    }
    return {
        "architecture": str(stored.model.name),
        "source": str(stored.model.get("source", "timm")),
        "task": trained.task,
        "num_classes": num_outputs,
        "label_names": list(trained.classes),
        "pretrained_cfg": pretrained_cfg,
    }


def _example(trained: Trained, batch: int = 3) -> torch.Tensor:
    size = int(trained.input_spec["size"])
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _compare(name: str, theirs: torch.Tensor, ours: torch.Tensor) -> float:
    diff = float((theirs.float() - ours.float()).abs().max())
    if not diff <= TOLERANCE:
        raise UserError(f"the {name} export differs from torch by {diff:.2e} on a test batch (over {TOLERANCE}).")
    return diff


def export_onnx(trained: Trained, path: Path) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("format=onnx checks the file with onnxruntime: pip install onnx onnxruntime") from None
    x = _example(trained)
    torch.onnx.export(
        trained.model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = _example(trained, batch=5)  # another batch size than the one traced: the axis is dynamic
    theirs = torch.from_numpy(session.run(None, {"input": check.numpy()})[0])
    with torch.no_grad():
        return _compare("onnx", theirs, trained.model(check))


def export_torchscript(trained: Trained, path: Path) -> float:
    with torch.no_grad():
        traced = torch.jit.trace(trained.model, _example(trained))
    traced.save(str(path))
    check = _example(trained, batch=5)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return _compare("torchscript", loaded(check), trained.model(check))


def export(checkpoint: str, fmt: str, out: Path | None, allow: tuple[str, ...] = ()) -> tuple[list[Path], float | None]:
    """Write the export; returns the files and the checked difference (None for safetensors)."""
    if fmt not in ("safetensors", "onnx", "torchscript"):
        raise UserError(f"format={fmt!r} is not valid: use safetensors, onnx or torchscript.")
    weights_name = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}[fmt]
    files = {weights_name: _EXPORT_OF, "config.json": _EXPORT_CONFIG}
    if out is not None:
        check_folder(out, files, "a model export")
    trained = load_trained(checkpoint, allow)
    run_dir = trained.checkpoint.parent.parent if trained.checkpoint.parent.name == "checkpoints" else None
    out = out or (run_dir or trained.checkpoint.parent) / "export"
    check_folder(out, files, "a model export")
    weights, config = out / weights_name, out / "config.json"
    diff = None
    with atomic_file(weights) as tmp:  # checked before it takes its name: a failed check leaves no file
        if fmt == "safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
            save_file(tensors, str(tmp), metadata={"classes": json.dumps(trained.classes)})
        elif fmt == "onnx":
            diff = export_onnx(trained, tmp)
        else:
            diff = export_torchscript(trained, tmp)
    with atomic_file(config) as tmp:
        tmp.write_text(json.dumps(timm_config(trained), indent=2))
    return [weights, config], diff


def main() -> None:
    def body() -> None:
        args = parse_args(sys.argv[1:], KEYS, ("checkpoint",), __doc__ or "")
        out = Path(str(args["out"])).expanduser() if args["out"] else None
        files, diff = export(str(args["checkpoint"]), str(args["format"]), out, trusted(args["allow_targets"]))
        checked = f" (checked against torch: max |logit difference| {diff:.1e})" if diff is not None else ""
        print(f"wrote {' and '.join(str(f) for f in files)}{checked}")

    run_command(body)


if __name__ == "__main__":
    main()
