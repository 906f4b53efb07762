"""The runtimes that run a trained model: torch (eager), ONNX Runtime and OpenVINO, in fp32 or int8.

Each is prepared from the trained model (the ONNX file exported and checked as `export-model` does it)
and then takes normalized float32 batches and returns logits. int8 is ONNX Runtime's static
quantization (QDQ, per-channel weights) calibrated on the run's own training images; OpenVINO runs the
same quantized file. An int8 model is kept only when its top-1 agrees with the fp32 torch model's on
at least 99% of validation images (``AGREEMENT``); fp32 formats keep the 1e-4 logit check.
``runtime=auto`` times each installed runtime on the first batch and keeps the fastest.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError

log = logging.getLogger("trainer")

RUNTIMES = ("torch", "onnx", "openvino")
PACKAGES = {"onnx": ("onnxruntime", "export"), "openvino": ("openvino", "openvino")}
AGREEMENT = 0.99  # int8: the share of validation images whose top-1 must equal fp32 torch's
CALIBRATION_IMAGES = 300
CHECK_IMAGES = 500


def installed(runtime: str) -> bool:
    package = PACKAGES.get(runtime)
    return package is None or importlib.util.find_spec(package[0]) is not None


def require(runtime: str) -> None:
    if not installed(runtime):
        package, extra = PACKAGES[runtime]
        raise UserError(
            f"runtime={runtime} needs the {package} package, which is not installed: pip install "
            f"'transfer-trainer[{extra}]' (or pip install {package}), or use runtime=torch."
        )


class TorchRunner:
    """Eager PyTorch, as training evaluates (bf16 autocast on a GPU that has it)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, channels_last: bool = False) -> None:
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model, self.device = model.to(device, memory_format=self.layout).eval(), device
        self.bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x.to(self.device, memory_format=self.layout)).float().cpu()


class OnnxRunner:
    """An ONNX file in ONNX Runtime's CPU provider, as many threads as torch uses."""

    name = "onnx"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.float().cpu().numpy()})[0])


class OpenVinoRunner:
    """An ONNX or OpenVINO IR file compiled by OpenVINO for the CPU, in f32 (int8 where the file is quantized)."""

    name = "openvino"

    def __init__(self, path: Path) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.output = self.compiled.output(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.float().cpu().numpy())[self.output].copy())


def cache_folder(checkpoint: Path) -> Path:
    """Where predict keeps the exports of one checkpoint, named by the checkpoint's SHA-256 (another
    checkpoint, or the same path trained on, gets another folder): $TRAINER_CACHE, else
    ~/.cache/transfer-trainer/exports."""
    import hashlib
    import os

    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    base = os.environ.get("TRAINER_CACHE") or Path.home() / ".cache" / "transfer-trainer" / "exports"
    return Path(base) / digest.hexdigest()[:32]


def read_choice(cache: Path, key: str, candidates: list[str]) -> tuple[str, str] | None:
    """``runtime=auto``'s earlier answer for ``key`` in ``cache``/auto.json (a small JSON file of ours:
    bounded, and only a runtime still among the candidates is taken)."""
    import json

    path = cache / "auto.json"
    try:
        if path.stat().st_size > 64 * 1024:
            return None
        entry = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and entry.get("runtime") in candidates and isinstance(entry.get("measured"), str):
        return str(entry["runtime"]), entry["measured"][:200]
    return None


def write_choice(cache: Path, key: str, runtime: str, measured: str) -> None:
    import json
    import os

    path = cache / "auto.json"
    try:
        known = json.loads(path.read_text()) if path.is_file() and path.stat().st_size <= 64 * 1024 else {}
    except ValueError:
        known = {}
    known = known if isinstance(known, dict) else {}
    known[key] = {"runtime": runtime, "measured": measured}
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / f".auto.json.{os.getpid()}.tmp"
    part.write_text(json.dumps(known, indent=2))
    os.replace(part, path)


def top1_agreement(
    runner: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
) -> float:
    """The share of images whose most probable class is the same under both."""
    same = total = 0
    for x in batches:
        a, b = runner(x), reference(x)
        if a.shape[1] == 1:  # one logit (binary): its sign
            same += int(((a > 0) == (b > 0)).sum())
        else:
            same += int((a.argmax(1) == b.argmax(1)).sum())
        total += a.shape[0] if a.dim() == 2 else a[:, 0].numel()
    return same / max(1, total)


def quantize_int8(fp32: Path, out: Path, calibration: Iterator[torch.Tensor]) -> None:
    """ONNX Runtime's static int8 quantization of ``fp32`` (QDQ; per-channel int8 weights, uint8
    activations; ranges from the calibration batches) into ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.name, self.batches = name, iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self.batches, None)
            return None if x is None else {self.name: x.float().numpy()}

    prepared = out.with_name(out.stem + ".prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader("input"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)


def choose_fastest(runners: list[Any], x: torch.Tensor, repeats: int = 3) -> tuple[Any, str]:
    """``runtime=auto``: the runner with the best time on ``x`` (best of ``repeats`` after a warm-up)."""
    timings = {}
    for runner in runners:
        runner(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            runner(x)
            best = min(best, time.perf_counter() - start)
        timings[runner.name] = x.shape[0] / best
    fastest = max(runners, key=lambda r: timings[r.name])
    table = ", ".join(f"{name} {ips:.0f} img/s" for name, ips in timings.items())
    return fastest, f"runtime=auto: {fastest.name} ({table} on the first batch)"
