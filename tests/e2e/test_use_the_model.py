"""Using a trained model: `predict` on new images (the model's own preprocessing, a broken file listed
and skipped), and the checks that keep it from running code."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from runner import in_process, train
from support import HANG_GUARD, TINY, offline_env

COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


def _colour_folder(root, n, seed):
    """Two classes anyone can tell apart: reddish and bluish noisy squares of varied sizes."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = int(rng.integers(20, 48))
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def command(name, args, cwd, real=False):
    """The command in the test's process, or with ``real`` as its own process (the entry point itself)."""
    if not real:
        return in_process(name, args, cwd)
    return subprocess.run(
        [sys.executable, "-m", f"trainer.use.{name}", *args],
        cwd=cwd,
        env=offline_env(cwd),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colours")
    _colour_folder(tmp / "train", 24, seed=0)
    run = tmp / "run"
    model = [a for a in TINY if a.startswith("model.")]
    train(
        [
            *model,
            "data=imagefolder",
            f"data.root={tmp / 'train'}",
            "data.image_size=32",
            "trainer.epochs=3",
            "finetune.head_epochs=0",
            f"hydra.run.dir={run}",
        ],
        tmp,
    )
    return tmp, run


@pytest.mark.slow
def test_predict_labels_new_images_and_lists_the_unreadable_one(colour_run):
    tmp, run = colour_run
    new = tmp / "new"
    _colour_folder(new, 6, seed=1)
    (new / "red" / "broken.png").write_bytes(b"not an image")
    out = tmp / "predictions.csv"
    proc = command(
        "predict", [f"checkpoint={run}", f"source={new}", f"out={out}", "topk=2", "tta=flip"], tmp, real=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "12 images predicted" in proc.stdout and "1 could not be read" in proc.stdout
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 13
    broken = [r for r in rows if r["error"]]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.png")
    good = [r for r in rows if not r["error"]]
    right = sum(r["label_1"] == r["path"].split("/")[-2] for r in good)
    assert right >= 11, rows  # the colours are learnt: new images are labelled by what they show
    for r in good:
        assert float(r["prob_1"]) >= float(r["prob_2"]) and abs(float(r["prob_1"]) + float(r["prob_2"]) - 1) < 1e-4
    # one image, a glob, mistakes
    one = command("predict", [f"checkpoint={run}", f"source={new / 'blue' / '0.png'}", f"out={tmp / 'one.csv'}"], tmp)
    assert one.returncode == 0 and list(csv.DictReader(open(tmp / "one.csv")))[0]["label_1"] == "blue"
    glob = command(
        "predict",
        [f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"source={new}/red/*.png", f"out={tmp / 'g.csv'}"],
        tmp,
    )
    assert glob.returncode == 0 and len(list(csv.DictReader(open(tmp / "g.csv")))) == 7
    for args, expected in (
        ([f"checkpoint={run}", "source=nowhere"], "source='nowhere': no images there"),
        ([f"checkpoint={run}", f"source={new}", "tta=rotate"], "tta='rotate' is not valid"),
        ([f"checkpoint={run}", f"sorce={new}"], "sorce: there is no such key. Did you mean source?"),
        ([f"checkpoint={tmp}", f"source={new}"], "holds no checkpoints/best.pt"),
    ):
        bad = command("predict", args, tmp)
        assert bad.returncode == 2 and expected in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.slow
def test_evaluate_tta_flip_scores_the_mean_of_the_logits_on_each_image_and_its_mirror(colour_run):
    import json

    import torch

    from trainer.data.images import decode_rgb
    from trainer.models.trained import load_trained, preprocess

    tmp, run = colour_run
    folder = tmp / "tta"
    _colour_folder(folder, 10, seed=5)
    out = tmp / "e-tta"
    proc = command("evaluate", [f"checkpoint={run}", f"data.root={folder}", "tta=flip", f"out={out}"], tmp)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    trained = load_trained(str(run))
    correct, scored = 0, 0
    with torch.no_grad():
        for target, name in enumerate(trained.classes):
            for path in sorted((folder / name).glob("*.png")):
                x = preprocess(trained)(decode_rgb(str(path))).unsqueeze(0)
                logits = (trained.model(x) + trained.model(torch.flip(x, dims=[-1]))) / 2
                correct, scored = correct + int(logits.argmax(1).item() == target), scored + 1
    assert report["tta"] == "flip" and report["images"] == scored == 20
    assert report["val/acc"] == pytest.approx(correct / 20, abs=1e-9)
    # the run's own val split, with and without the mirror images: two different passes
    on_val = [tmp / f"e-val-{t}" for t in ("none", "flip")]
    for t, where in zip(("none", "flip"), on_val):
        assert command("evaluate", [f"checkpoint={run}", f"tta={t}", f"out={where}"], tmp).returncode == 0
    plain, flipped = (json.loads((w / "metrics.json").read_text()) for w in on_val)
    assert plain["tta"] == "none" and flipped["tta"] == "flip" and plain["val/loss"] != flipped["val/loss"]
    bad = command("evaluate", [f"checkpoint={run}", "tta=rotate"], tmp)
    assert bad.returncode == 2 and "tta='rotate' is not valid: use none or flip" in bad.stderr


@pytest.mark.slow
def test_export_formats_equal_torch_and_timm_loads_the_exported_config(colour_run):
    import json
    import os

    import onnxruntime as ort
    import timm
    import torch
    from safetensors.torch import load_file

    from trainer.models.trained import load_trained

    tmp, run = colour_run
    trained = load_trained(str(run))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = trained.model(x)
    out = tmp / "exported"
    for fmt in ("safetensors", "onnx", "torchscript"):
        proc = command("export", [f"checkpoint={run}", f"format={fmt}", f"out={out}"], tmp, real=fmt == "onnx")
        assert proc.returncode == 0, proc.stderr
        if fmt != "safetensors":
            assert "checked against torch: max |logit difference|" in proc.stdout
    for name in ("model.safetensors", "model.onnx", "model.pt", "config.json"):
        assert os.stat(out / name).st_mode & 0o777 == 0o644, name
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["label_names"] == ["blue", "red"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["num_classes"] == 2
    tensors = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(tensors[k], v) for k, v in trained.model.state_dict().items())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])  # a batch size not traced
    assert (onnx_logits - expected).abs().max() <= 1e-4
    with torch.no_grad():
        assert (torch.jit.load(str(out / "model.pt"))(x) - expected).abs().max() <= 1e-4
    # timm rebuilds the model from the folder, or from the file with the class count in the overlay
    for model in (
        timm.create_model(f"local-dir:{out}", pretrained=True),
        timm.create_model(
            "test_resnet",
            num_classes=2,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=2),
        ),
    ):
        with torch.no_grad():
            assert (model.eval()(x) - expected).abs().max() <= 1e-5
    # and a new run starts from the exported weights
    again = tmp / "again"
    model_args = [a for a in TINY if a.startswith("model.") and not a.startswith(("model.pretrained", "model.weights"))]
    train(
        [
            *model_args,
            "model.pretrained=true",
            f"model.weights={out / 'model.safetensors'}",
            "data=fake",
            "trainer.epochs=1",
            f"hydra.run.dir={again}",
        ],
        tmp,
    )
    bad = command("export", [f"checkpoint={run}", "format=tflite"], tmp)
    assert bad.returncode == 2 and "format='tflite' is not valid" in bad.stderr


@pytest.mark.slow
def test_evaluate_scores_the_val_split_or_another_folder_matched_by_class_name(colour_run):
    import json

    tmp, run = colour_run
    val = command("evaluate", [f"checkpoint={run}"], tmp, real=True)
    assert val.returncode == 0, val.stderr
    stored = json.loads((run / "metrics.json").read_text())
    best = stored["history"][stored["best_epoch"] - 1]["val/acc"]
    assert float(val.stdout.split("val/acc ")[1].split()[0]) == pytest.approx(best, abs=1e-4)
    other = tmp / "other"
    _colour_folder(other, 8, seed=2)
    (other / "red" / "broken.png").write_bytes(b"not an image")
    proc = command("evaluate", [f"checkpoint={run}", f"data.root={other}", f"out={tmp / 'report'}"], tmp)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "report" / "metrics.json").read_text())
    assert report["images"] == 16 and report["val/acc"] >= 0.9 and report["data"] == str(other)
    assert set(report["per_class"]["recall"]) == {"blue", "red"}
    assert (tmp / "report" / "per_class.csv").read_text().startswith("class,")
    assert (tmp / "report" / "confusion_matrix.png").is_file()
    (other / "green").mkdir()
    (other / "blue").rename(other / "navy")
    wrong = command("evaluate", [f"checkpoint={run}", f"data.root={other}"], tmp)
    assert (
        wrong.returncode == 2
        and "missing: ['blue']" in wrong.stderr
        and "unknown to the model: ['green', 'navy']" in wrong.stderr
    )


def test_evaluate_lists_exactly_the_misclassified_images_worst_first(colour_run):
    import csv
    import shutil

    tmp, run = colour_run
    folder = tmp / "mixed"
    _colour_folder(folder, 6, seed=3)
    for i in (0, 1):  # two blue squares filed as red: the model (right on colours) must call them blue
        shutil.copy(folder / "blue" / f"{i}.png", folder / "red" / f"filed-wrong-{i}.png")
    proc = command("evaluate", [f"checkpoint={run}", f"data.root={folder}", f"out={tmp / 'mixed-report'}"], tmp)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp / "mixed-report" / "errors.csv")))
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in rows) == ["filed-wrong-0.png", "filed-wrong-1.png"]
    assert all(r["true"] == "red" and r["predicted"] == "blue" for r in rows)
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True) and all(loss > 0.69 for loss in losses)  # p(true) < 0.5
    assert "most confused (true -> predicted): red -> blue (2)" in proc.stdout
    grid = Image.open(tmp / "mixed-report" / "errors.png")
    assert grid.size[0] > 400  # four columns at a readable size
    val = command("evaluate", [f"checkpoint={run}", f"out={tmp / 'val-report'}"], tmp)
    assert val.returncode == 0 and (tmp / "val-report" / "errors.csv").read_text().startswith("path,true,predicted")


def test_evaluate_builds_only_what_scoring_uses(finished_run, monkeypatch):
    """A run saved with a time budget, lr=auto, batch_size=auto and a W&B logger is scored without timing
    a step, a range test, a batch probe, a tracker or wandb: each of those fails this test if it runs."""
    import json

    import yaml

    from trainer.loop import build
    from trainer.runs.checkpoint import load_checkpoint, save_checkpoint

    best = finished_run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    config = yaml.safe_load(state["config"])
    config["trainer"]["time_budget"] = "1h"
    config["optimizer"]["lr"] = "auto"
    config["data"]["batch_size"] = "auto"
    config["logger"] = {"wandb": {"project": "never", "entity": None, "mode": "online", "group": None}}
    state["config"] = yaml.safe_dump(config)
    save_checkpoint(state, best)

    def training_work(*_a, **_k):
        raise AssertionError("evaluate did training work")

    for name in ("plan_budget", "find_lr", "probe_batch", "setup_tracker", "setup_loggers", "setup_stage_plan"):
        monkeypatch.setattr(build, name, training_work)
    proc = in_process("evaluate", [f"checkpoint={finished_run}", f"out={finished_run / 'e'}"], finished_run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((finished_run / "e" / "metrics.json").read_text())
    stored = json.loads((finished_run / "metrics.json").read_text())
    assert report["val/acc"] == pytest.approx(stored["history"][stored["best_epoch"] - 1]["val/acc"], abs=1e-6)


def _close_colours(root, n, seed):
    """Two classes that overlap: warm and cool noisy squares, so a model gets some of them wrong."""
    rng = np.random.default_rng(seed)
    for name, rgb in {"cool": (108, 110, 132), "warm": (132, 110, 108)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = int(rng.integers(20, 48))
            pixels = np.clip(np.array(rgb) + rng.normal(0, 70, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_one_checkpoint_has_one_score_in_its_log_evaluate_a_folder_and_its_onnx_export(tmp_path):
    """Trained in bf16, the val pass that picks best.pt runs in fp32 (trainer.eval_precision), as every
    use of the model does: the best epoch's numbers in the run's log, `evaluate` on the run, `evaluate
    data.root=` on the same val images and the ONNX export (scored here by hand with onnxruntime) agree."""
    import json

    import onnxruntime as ort
    import torch

    from trainer.data.images import decode_rgb
    from trainer.models.trained import load_trained, preprocess

    _close_colours(tmp_path / "data" / "train", 40, seed=0)
    _close_colours(tmp_path / "data" / "val", 30, seed=1)
    run = tmp_path / "run"
    model = [a for a in TINY if a.startswith("model.")]
    args = ["data=imagefolder", f"data.root={tmp_path / 'data'}", "data.image_size=32", "trainer.precision=bf16"]
    train([*model, *args, "trainer.epochs=2", "finetune.head_epochs=0", f"hydra.run.dir={run}"], tmp_path)
    stored = json.loads((run / "metrics.json").read_text())
    logged = stored["history"][stored["best_epoch"] - 1]
    assert command("evaluate", [f"checkpoint={run}", f"out={tmp_path / 'e1'}"], tmp_path).returncode == 0
    on_run = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    val = tmp_path / "data" / "val"
    proc = command("evaluate", [f"checkpoint={run}", f"data.root={val}", f"out={tmp_path / 'e2'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    on_folder = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    proc = command("export", [f"checkpoint={run}", "format=onnx", f"out={tmp_path / 'x'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr

    trained = load_trained(str(run))
    temperature = trained.state["calibration"]["temperature"][0]  # in the exported graph: logits / temperature
    in_graph = json.loads((tmp_path / "x" / "config.json").read_text())["calibration"]
    assert in_graph["in_graph"] and in_graph["temperature"] == pytest.approx([temperature])
    session = ort.InferenceSession(str(tmp_path / "x" / "model.onnx"), providers=["CPUExecutionProvider"])
    correct, losses, raw, targets, paths = 0, [], [], [], []
    for target, name in enumerate(trained.classes):
        for path in sorted((val / name).glob("*.png")):
            x = preprocess(trained)(decode_rgb(str(path))).unsqueeze(0)
            logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0]) * temperature
            correct += int(logits.argmax(1).item() == target)
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor([target]))))
            raw.append(logits), targets.append(target), paths.append(str(path))
    n = len(losses)
    onnx_acc, onnx_loss = correct / n, sum(losses) / n
    assert n == 60 and 0.5 < onnx_acc < 1.0  # a model that gets some wrong: the numbers can differ
    for acc in (on_run["val/acc"], on_folder["val/acc"], onnx_acc):
        assert abs(acc - logged["val/acc"]) <= 1 / n + 1e-9, (logged["val/acc"], on_run, on_folder, onnx_acc)
    assert on_run["val/loss"] == pytest.approx(logged["val/loss"], abs=1e-5)
    # fp32 both: 2e-8 apart here; the same run's val pass in bf16 (trainer.eval_precision=same): 3e-6
    assert onnx_loss == pytest.approx(logged["val/loss"], abs=1e-6)

    # the calibration figures before the temperature, held to torchmetrics and sums by hand on the
    # export's own logits; the temperature is the one best.pt keeps; predict applies it
    from torchmetrics.functional.classification import multiclass_calibration_error

    raw, truth = torch.cat(raw), torch.tensor(targets)
    calibration = stored["calibration"]
    assert calibration["temperature"] == [temperature] and calibration["images"] == n
    before = calibration["before"]
    assert before["nll"] == pytest.approx(logged["val/loss"], abs=1e-5)
    ece = multiclass_calibration_error(raw.softmax(1), truth, num_classes=2, n_bins=15, norm="l1")
    assert before["ece"] == pytest.approx(float(ece), abs=1e-5)
    hot = torch.nn.functional.one_hot(truth, 2).float()
    assert before["brier"] == pytest.approx(float(((raw.softmax(1) - hot) ** 2).sum(1).mean()), abs=1e-5)
    assert (run / "reliability.png").is_file()
    # evaluate on the folder reports the same figures, and with the temperature those of predict's probabilities
    folder = on_folder["calibration"]
    assert folder["without_temperature"]["ece"] == pytest.approx(float(ece), abs=1e-5)
    scaled = multiclass_calibration_error((raw / temperature).softmax(1), truth, num_classes=2, n_bins=15, norm="l1")
    assert folder["with_temperature"]["ece"] == pytest.approx(float(scaled), abs=1e-5)
    nll = torch.nn.functional.cross_entropy(raw / temperature, truth)
    assert folder["with_temperature"]["nll"] == pytest.approx(float(nll), abs=1e-5)
    assert "fit on these images" in on_run["calibration"]["note"]
    out = tmp_path / "p.csv"
    proc = command("predict", [f"checkpoint={run}", f"source={val}", f"out={out}", "topk=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "probabilities calibrated: logits / temperature" in proc.stderr
    rows = {r["path"]: float(r["prob_1"]) for r in csv.DictReader(open(out))}
    calibrated = (raw / temperature).softmax(1).max(1).values
    assert [rows[p] for p in paths] == pytest.approx(calibrated.tolist(), abs=1e-5)
