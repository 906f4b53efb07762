"""`export-model`: a trained model as a file other tools load, checked against torch before it is kept.

    export-model checkpoint=<run folder | .pt> [format=safetensors|onnx|torchscript|openvino]
                 [quantize=none|int8] [out=DIR]

Every format writes DIR/config.json in timm's pretrained-config form (architecture, num_classes,
label_names, input_size, interpolation, mean, std, crop_pct) beside the weights:

- safetensors: DIR/model.safetensors, tensors only. For a timm model with timm's own head,
  ``timm.create_model(arch, num_classes=N, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
  rebuilds it; ``train model.weights=DIR/model.safetensors`` starts a new run from it.
- onnx: DIR/model.onnx with a dynamic batch axis, run by onnxruntime on a batch of 3 and compared
  with torch (the largest logit difference is printed; over 1e-4 is an error).
- torchscript: DIR/model.pt traced with torch.jit.trace, compared the same way.
- openvino: DIR/model.xml and model.bin (OpenVINO IR, converted from the ONNX export), run by OpenVINO
  on the CPU and compared the same way.
- quantize=int8 (onnx, openvino): DIR/model.int8.onnx or model.int8.xml/.bin, ONNX Runtime's static
  int8 quantization calibrated on 300 of the run's training images; kept only when its top-1 agrees
  with the fp32 torch model's on at least 99% of 500 validation images (the agreement is printed).

A checkpoint with a temperature (fit at the end of training, trainer/loop/calibration.py) has it in the
graph of onnx, torchscript and openvino exports: their logits are already divided by it, so a softmax
or sigmoid of them gives the calibrated probabilities. config.json says so under ``calibration``
(``in_graph: true``); a safetensors export holds the network's own weights, and its config.json gives
the temperature to divide the logits by (``in_graph: false``). Labels and accuracy are the same either way.

Files are written mode 644. Default DIR: the run folder's export/.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.errors import UserError
from trainer.loop.calibration import Scaled, stored_temperature
from trainer.models.trained import Trained, load_trained
from trainer.use.command import parse_args, run_command, trusted
from trainer.use.outputs import atomic_file, check_folder, json_with_keys

KEYS = {"checkpoint": None, "format": "safetensors", "quantize": "none", "out": "", "allow_targets": ""}
FORMATS = ("safetensors", "onnx", "torchscript", "openvino")
TOLERANCE = 1e-4
_EXPORT_CONFIG = json_with_keys("architecture", "label_names", "pretrained_cfg")
# an existing weights file is replaced only beside the config.json of an export
_EXPORT_OF = lambda p: (p.parent / "config.json").is_file() and _EXPORT_CONFIG(p.parent / "config.json")  # noqa: E731


def timm_config(trained: Trained) -> dict[str, Any]:
    """timm's pretrained-config form, for the loaders that read it (timm, Hugging Face)."""
    spec, stored = trained.input_spec, trained.config  # the config the checkpoint was trained with
    num_outputs = task_named(trained.task).outputs(len(trained.classes))
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


def run_batches(trained: Trained, split: str, images: int, batch: int = 50) -> list[torch.Tensor]:
    """Up to ``images`` of the run's own ``split`` images (its stored data config), preprocessed as
    predict does: calibration and agreement checks use real data, not noise."""
    from trainer.loop.build import build_splits
    from trainer.models.trained import preprocess

    try:
        splits = build_splits(trained.config)
    except Exception as e:
        raise UserError(
            f"quantize=int8 calibrates and checks on the run's own images, and its data could not be read ({e}). "
            "Export on a machine that has the run's data folder."
        ) from None
    images_of = getattr(splits, split)
    transform = preprocess(trained)
    step = max(1, len(images_of) // images)  # spread over the split, not its first classes only
    picked = list(range(0, len(images_of), step))[:images]
    xs = [transform(images_of.load(i)) for i in picked]
    return [torch.stack(xs[i : i + batch]) for i in range(0, len(xs), batch)]


def check_agreement(runner: Any, trained: Trained, name: str) -> float:
    from trainer.use.runtimes import AGREEMENT, CHECK_IMAGES, TorchRunner, top1_agreement

    reference = TorchRunner(trained.model, torch.device("cpu"))
    agreement = top1_agreement(runner, reference, run_batches(trained, "val", CHECK_IMAGES))
    if agreement < AGREEMENT:
        raise UserError(
            f"the int8 {name} model agrees with the fp32 torch model on {agreement:.1%} of the validation images' top-1 "
            f"(under {AGREEMENT:.0%}): it is not kept. Export without quantize=int8."
        )
    return agreement


def export_int8_onnx(trained: Trained, path: Path) -> float:
    """model.int8.onnx: quantized from the checked fp32 ONNX export; returns its top-1 agreement."""
    import tempfile

    from trainer.use.runtimes import CALIBRATION_IMAGES, OnnxRunner, quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(trained, fp32)
        quantize_int8(fp32, path, iter(run_batches(trained, "train", CALIBRATION_IMAGES)))
    return check_agreement(OnnxRunner(path), trained, "onnx")


def export_openvino(trained: Trained, xml: Path, int8: bool) -> float:
    """model.xml/.bin (OpenVINO IR) from the ONNX export (int8: the quantized one); returns the max logit
    difference from torch (fp32) or the top-1 agreement (int8)."""
    import tempfile

    try:
        import openvino as ov
    except ImportError:
        raise UserError(
            "format=openvino needs OpenVINO: pip install 'transfer-trainer[openvino]' (or pip install openvino)"
        ) from None
    from trainer.use.runtimes import OpenVinoRunner

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.onnx"
        if int8:
            export_int8_onnx(trained, source)
        else:
            export_onnx(trained, source)
        ov.save_model(ov.convert_model(str(source)), str(xml), compress_to_fp16=False)
    runner = OpenVinoRunner(xml)
    return check_agreement(runner, trained, "openvino") if int8 else check_runner(trained, runner, "openvino")


def check_runner(trained: Trained, runner: Any, name: str, batch: int = 5) -> float:
    """The largest logit difference of ``runner`` from the torch model on a test batch (over 1e-4: an error)."""
    check = _example(trained, batch=batch)
    with torch.no_grad():
        return _compare(name, runner(check), trained.model.cpu()(check))


def export_runner(trained: Trained, runtime: str, int8: bool, path: Path) -> Any:
    """The model exported (and checked) to ``path`` for ``runtime`` (onnx: model.onnx; openvino: model.xml
    and .bin beside it) and loaded in it."""
    from trainer.use.runtimes import OnnxRunner, OpenVinoRunner

    if runtime == "onnx":
        (export_int8_onnx if int8 else export_onnx)(trained, path)
        return OnnxRunner(path)
    export_openvino(trained, path, int8)
    return OpenVinoRunner(path)


def export_torchscript(trained: Trained, path: Path) -> float:
    with torch.no_grad():
        traced = torch.jit.trace(trained.model, _example(trained))
    traced.save(str(path))
    check = _example(trained, batch=5)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return _compare("torchscript", loaded(check), trained.model(check))


def weights_names(fmt: str, quantize: str) -> list[str]:
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is not valid: use {', '.join(FORMATS)}.")
    if quantize not in ("none", "int8"):
        raise UserError(f"quantize={quantize!r} is not valid: use int8 or none.")
    if quantize == "int8" and fmt not in ("onnx", "openvino"):
        raise UserError(
            f"quantize=int8 makes an ONNX or OpenVINO model: use format=onnx or format=openvino, not {fmt}."
        )
    stem = "model.int8" if quantize == "int8" else "model"
    return {
        "safetensors": ["model.safetensors"],
        "onnx": [f"{stem}.onnx"],
        "torchscript": ["model.pt"],
        "openvino": [f"{stem}.xml", f"{stem}.bin"],
    }[fmt]


def export(
    checkpoint: str, fmt: str, out: Path | None, allow: tuple[str, ...] = (), quantize: str = "none"
) -> tuple[list[Path], dict[str, float]]:
    """Write the export; returns the files and what was checked ({"max_diff": ...} or {"agreement": ...})."""
    names = weights_names(fmt, quantize)
    files = {**{n: _EXPORT_OF for n in names}, "config.json": _EXPORT_CONFIG}
    if out is not None:
        check_folder(out, files, "a model export")
    trained = load_trained(checkpoint, allow)
    temperature = stored_temperature(trained.state)
    if temperature is not None and fmt != "safetensors":  # in the graph: logits / temperature
        trained = dataclasses.replace(trained, model=Scaled(trained.model, temperature).eval())
    run_dir = trained.checkpoint.parent.parent if trained.checkpoint.parent.name == "checkpoints" else None
    out = out or (run_dir or trained.checkpoint.parent) / "export"
    check_folder(out, files, "a model export")
    weights, config = out / names[0], out / "config.json"
    checked: dict[str, float] = {}
    int8 = quantize == "int8"
    with atomic_file(weights) as tmp:  # checked before it takes its name: a failed check leaves no file
        if fmt == "safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
            save_file(tensors, str(tmp), metadata={"classes": json.dumps(trained.classes)})
        elif fmt == "onnx":
            checked = {"agreement": export_int8_onnx(trained, tmp)} if int8 else {"max_diff": export_onnx(trained, tmp)}
        elif fmt == "openvino":
            try:
                value = export_openvino(trained, tmp.with_suffix(".xml"), int8)
                tmp.with_suffix(".xml").replace(tmp)
                tmp.with_suffix(".bin").replace(out / names[1])  # the weights beside, under their final name
            finally:
                for leftover in (tmp.with_suffix(".xml"), tmp.with_suffix(".bin")):
                    leftover.unlink(missing_ok=True)
            checked = {"agreement": value} if int8 else {"max_diff": value}
        else:
            checked = {"max_diff": export_torchscript(trained, tmp)}
    described = timm_config(trained)
    if temperature is not None:
        described["calibration"] = {"temperature": temperature.tolist(), "in_graph": fmt != "safetensors"}
    with atomic_file(config) as tmp:
        tmp.write_text(json.dumps(described, indent=2))
    return [out / n for n in names] + [config], checked


def main() -> None:
    def body() -> None:
        args = parse_args(sys.argv[1:], KEYS, ("checkpoint",), __doc__ or "")
        out = Path(str(args["out"])).expanduser() if args["out"] else None
        files, result = export(
            str(args["checkpoint"]), str(args["format"]), out, trusted(args["allow_targets"]), str(args["quantize"])
        )
        checked = ""
        if "max_diff" in result:
            checked = f" (checked against torch: max |logit difference| {result['max_diff']:.1e})"
        if "agreement" in result:
            checked = (
                f" (top-1 agreement with the fp32 torch model: {result['agreement']:.2%} of the validation images)"
            )
        print(f"wrote {' and '.join(str(f) for f in files)}{checked}")

    run_command(body)


if __name__ == "__main__":
    main()
