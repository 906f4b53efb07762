"""The runtimes beside torch: ONNX Runtime and OpenVINO in fp32 (logits within 1e-4 of torch, the same
labels from predict) and int8 (top-1 agreement with fp32 torch printed, held to an agreement computed
here with onnxruntime's own session, and refused under 99%); runtime=auto's choice and its refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from runner import in_process, train
from support import TINY

pytest.importorskip("onnxruntime")


def colour_folder(root, n, seed):
    rng = np.random.default_rng(seed)
    for name, rgb in {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = int(rng.integers(20, 48))
            pixels = np.clip(np.array(rgb) + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runtimes")
    colour_folder(tmp / "data", 30, seed=0)
    colour_folder(tmp / "new", 6, seed=1)
    model = [a for a in TINY if a.startswith("model.")]
    args = [*model, "data=imagefolder", f"data.root={tmp / 'data'}", "data.image_size=32", "trainer.epochs=3"]
    train([*args, "finetune.head_epochs=0", f"hydra.run.dir={tmp / 'run'}"], tmp)
    return tmp, tmp / "run"


def predictions(path):
    return {r["path"]: r for r in csv.DictReader(open(path))}


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_an_exported_runtime_predicts_what_torch_predicts(run, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    tmp, run_dir = run
    base = [f"checkpoint={run_dir}", f"source={tmp / 'new'}"]
    assert in_process("predict", [*base, f"out={tmp / 't.csv'}", "runtime=torch"], tmp).returncode == 0
    proc = in_process("predict", [*base, f"out={tmp / f'{runtime}.csv'}", f"runtime={runtime}"], tmp)
    assert proc.returncode == 0, proc.stderr
    assert f"runtime={runtime}: the model exported, checked and cached" in proc.stderr
    again = in_process("predict", [*base, f"out={tmp / f'{runtime}.csv'}", f"runtime={runtime}"], tmp)
    assert f"runtime={runtime}: the export cached for this checkpoint" in again.stderr  # checked, not made again
    assert again.stdout == proc.stdout
    ours, theirs = predictions(tmp / "t.csv"), predictions(tmp / f"{runtime}.csv")
    assert len(ours) == 18 and ours.keys() == theirs.keys()
    for path, row in ours.items():
        assert theirs[path]["label_1"] == row["label_1"]
        assert float(theirs[path]["prob_1"]) == pytest.approx(float(row["prob_1"]), abs=1e-4)


def test_openvino_export_is_checked_against_torch(run):
    pytest.importorskip("openvino")
    from trainer.models.trained import load_trained
    from trainer.use.runtimes import OpenVinoRunner

    tmp, run_dir = run
    out = tmp / "ov"
    proc = in_process("export", [f"checkpoint={run_dir}", "format=openvino", f"out={out}"], tmp)
    assert proc.returncode == 0, proc.stderr
    assert "checked against torch: max |logit difference|" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"model.xml", "model.bin", "config.json"}
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        expected = load_trained(str(run_dir)).model(x)
    assert (OpenVinoRunner(out / "model.xml")(x) - expected).abs().max() <= 1e-4


def test_int8_agreement_is_printed_as_computed_independently_and_refused_below_99(run, monkeypatch):
    import onnxruntime as ort

    from trainer.config.targets import instantiate_node
    from trainer.models.trained import load_trained
    from trainer.use import runtimes
    from trainer.use.predict import preprocess

    tmp, run_dir = run
    out = tmp / "int8"
    proc = in_process("export", [f"checkpoint={run_dir}", "format=onnx", "quantize=int8", f"out={out}"], tmp)
    assert proc.returncode == 0, proc.stderr
    printed = float(proc.stdout.split("top-1 agreement with the fp32 torch model: ")[1].split("%")[0]) / 100
    # the same images (the run's val split), scored by a plain onnxruntime session and by torch
    trained = load_trained(str(run_dir))
    val = instantiate_node(trained.config.data.dataset).val
    x = torch.stack([preprocess(trained)(val.load(i)) for i in range(len(val))])
    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    int8 = session.run(None, {"input": x.numpy()})[0].argmax(1)
    with torch.no_grad():
        fp32 = trained.model(x).argmax(1).numpy()
    assert printed == pytest.approx(float((int8 == fp32).mean()), abs=1e-4) and printed >= 0.99
    ops = {n.op_type for n in __import__("onnx").load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized

    monkeypatch.setattr(runtimes, "AGREEMENT", 1.01)  # no model can pass: refused, nothing kept
    refused = tmp / "refused"
    proc = in_process("export", [f"checkpoint={run_dir}", "format=onnx", "quantize=int8", f"out={refused}"], tmp)
    assert proc.returncode == 2 and "it is not kept" in proc.stderr
    assert not (refused / "model.int8.onnx").exists()


def test_auto_keeps_torch_for_a_few_images_and_times_the_others_on_a_folder(run, monkeypatch):
    from trainer.use import predict

    tmp, run_dir = run
    base = [f"checkpoint={run_dir}", f"source={tmp / 'new'}", f"out={tmp / 'auto.csv'}"]
    proc = in_process("predict", base, tmp)  # 18 images: not worth an export
    assert proc.returncode == 0 and "runtime=auto:" not in proc.stderr
    monkeypatch.setattr(predict, "AUTO_FROM", 1)
    proc = in_process("predict", base, tmp)
    assert proc.returncode == 0 and "runtime=auto: " in proc.stderr and "torch " in proc.stderr
    chosen = proc.stderr.split("runtime=auto: ")[1].split(" ")[0]
    again = in_process("predict", base, tmp)  # the answer is kept for this checkpoint and batch size
    assert f"runtime=auto: {chosen} (measured earlier for this checkpoint" in again.stderr
    assert again.stdout == proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["runtime=torch", "quantize=int8"], "quantize=int8 runs in ONNX Runtime or OpenVINO"),
        (["runtime=tensorrt"], "runtime='tensorrt' is not valid"),
        (["quantize=int4"], "quantize='int4' is not valid"),
    ],
)
def test_bad_runtime_choices_are_one_paragraph(run, args, message):
    tmp, run_dir = run
    proc = in_process("predict", [f"checkpoint={run_dir}", f"source={tmp / 'new'}", f"out={tmp / 'x.csv'}", *args], tmp)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_missing_runtime_names_its_extra(monkeypatch):
    from trainer.errors import UserError
    from trainer.use import runtimes

    monkeypatch.setitem(runtimes.PACKAGES, "openvino", ("no_such_openvino", "openvino"))
    with pytest.raises(UserError, match=r"transfer-trainer\[openvino\]"):
        runtimes.require("openvino")
