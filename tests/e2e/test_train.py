"""Real runs of the `train` command: it learns, logs, checkpoints, resumes exactly, and sweeps."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runner import (
    final_tensors,
    in_process,
    interrupt_and_resume,
    kill_after_first_checkpoint,
    start_train,
    train,
    wait_for,
)
from support import HANG_GUARD, TINY, metrics, offline_env


def test_tiny_run_learns_and_leaves_a_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    train([*TINY, "trainer.epochs=3", f"hydra.run.dir={run_dir}"], tmp_path)
    m = metrics(run_dir)
    assert m["finished"] and m["epochs_done"] == 3
    losses = [h["train/loss"] for h in m["history"]]
    assert losses[-1] < losses[0] * 0.7, losses
    assert m["best"] >= 0.7, m["history"]  # 4 classes: chance is 0.25
    for rel in (".hydra/config.yaml", "train.log", "checkpoints/last.pt", "checkpoints/best.pt", "metrics.json"):
        assert (run_dir / rel).is_file(), rel
    log = (run_dir / "train.log").read_text()
    assert "epoch 3/3" in log
    # a log that is not a terminal gets progress lines inside each epoch, not an invisible bar
    assert "/256 images (" in log and "img/s" in log and "left in this epoch" in log
    import csv

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))  # one row per epoch, every metric
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val/acc"]) == pytest.approx(m["history"][-1]["val/acc"])

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "global_step",
        "best",
        "rng",
        "sampler",
        "config",
        "classes",
        "versions",
    ):
        assert key in ckpt, key
    assert ckpt["classes"] == ["class0", "class1", "class2", "class3"]
    assert "test_resnet" in ckpt["config"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "lr/head", "lr/backbone", "val/loss", "val/acc", "hparam/best"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert len(ea.Scalars("val/acc")) == 3
    # one x-axis: each epoch's values at the optimizer step where it ended, the same axis as train/loss
    ends = [e.step for e in ea.Scalars("val/acc")]
    assert ends[-1] == m["global_step"] and ends == [m["global_step"] // 3 * k for k in (1, 2, 3)]
    assert [e.value for e in ea.Scalars("epoch")] == [1, 2, 3]
    assert "train/images" in tags["images"]
    plugins = ea.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins


def test_head_only_stage_freezes_backbone_and_its_batchnorm(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=1")
    run = build_run(cfg, run_dir=tmp_path)
    backbone_before = {n: p.detach().clone() for n, p in run.model.named_parameters() if n not in run.head_names}
    bn = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats_before = bn[0].running_mean.clone()
    assert run.state.stage_idx == 0 and run.probe
    run.model.train()
    assert all(not m.training for m in bn), "frozen BatchNorm must stay in eval mode through train()"
    run.train_one_epoch(0)
    for n, p in run.model.named_parameters():
        if n not in run.head_names:
            assert torch.equal(p, backbone_before[n]), n
    assert torch.equal(bn[0].running_mean, stats_before)
    run.enter_stage(1)
    assert not run.probe
    run.model.train()
    assert all(m.training for m in bn)
    run.train_one_epoch(1)
    assert not torch.equal(bn[0].running_mean, stats_before)


def test_checkpoint_round_trip_restores_every_tensor(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=1", "finetune.head_epochs=0")
    run = build_run(cfg, run_dir=tmp_path / "a")
    run.train_one_epoch(0)
    run.state.epoch = 1
    path = run.save()
    other = build_run(cfg, run_dir=tmp_path / "b")
    other.resume_from(path)
    for (k, a), b in zip(run.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = run.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert other.state.epoch == 1 and other.state.global_step == run.state.global_step
    assert other.schedule.state_dict() == run.schedule.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("how,workers", [("auto", 0), ("path", 2)])
def test_killed_run_resumes_to_exactly_the_unbroken_result(tmp_path, how, workers):
    args = [
        *TINY,
        "trainer.epochs=2",
        "finetune.head_epochs=1",
        "checkpoint.every_n_steps=3",
        "data.dataset.train_size=512",
        f"data.num_workers={workers}",
    ]
    unbroken = tmp_path / "unbroken"
    train([*args, f"hydra.run.dir={unbroken}"], tmp_path)

    work = tmp_path / "killed"
    work.mkdir()
    run_dir = kill_after_first_checkpoint(args, work)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["batch_in_epoch"] > 0, "the kill should land mid-epoch"
    assert not metrics(run_dir)["finished"] if (run_dir / "metrics.json").exists() else True

    resume = "resume=auto" if how == "auto" else f"resume={run_dir / 'checkpoints' / 'last.pt'}"
    # `auto` must find the run from the same overrides; a path brings its own overrides along
    proc = train([*args, resume] if how == "auto" else [resume], work)
    assert "resum" in proc.stderr + proc.stdout
    assert len(list(work.glob("outputs/*/*"))) == 1, "resume continues in the same run folder"
    assert metrics(run_dir)["finished"]

    a, b = final_tensors(unbroken), final_tensors(run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert metrics(run_dir)["history"] == [
        {**h, "seconds": h2["seconds"]} for h, h2 in zip(metrics(unbroken)["history"], metrics(run_dir)["history"])
    ]


@pytest.mark.slow
def test_resume_auto_without_an_unfinished_run_starts_fresh(tmp_path):
    proc = train([*TINY, "trainer.epochs=1", "resume=auto"], tmp_path)
    assert "no unfinished run" in proc.stderr
    (run_dir,) = [p.parent.parent for p in tmp_path.glob("outputs/**/checkpoints/last.pt")]
    assert metrics(run_dir)["finished"]


@pytest.mark.slow
def test_sweep_writes_a_summary_best_first(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(["-m", "optimizer.lr=1e-5,3e-3,1e-3", *TINY, "trainer.epochs=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 3
    assert [float(r["best"]) for r in rows] == sorted((float(r["best"]) for r in rows), reverse=True)
    lrs = [float(r["overrides"].split()[0].removeprefix("optimizer.lr=")) for r in rows]
    assert sorted(lrs) == [1e-5, 1e-3, 3e-3]
    assert lrs[-1] == 1e-5  # too small to learn anything in 2 epochs: last
    assert all(Path(r["run_dir"]).is_dir() and r["status"] == "finished" for r in rows)
    md = (sweep / "summary.md").read_text()
    assert md.count("\n") == 5 and "| optimizer.lr=0.003 |" in md  # the swept column
    assert "sweep summary" in proc.stdout


@pytest.mark.slow
def test_the_builtin_demo(tmp_path):
    """The demo as `train` runs it (real pretrained EfficientNet-Lite0 on real digits), 3 of its 8
    epochs to spare the suite's time: from 0.61 after the head-only epoch to >= 0.90 (3 epochs reach
    0.939, all 8 about 0.98-0.99)."""
    start = time.time()
    proc = train(["trainer.epochs=3"], tmp_path, timeout=HANG_GUARD)
    (run_dir,) = [p.parent.parent for p in tmp_path.glob("outputs/**/checkpoints/best.pt")]
    m = metrics(run_dir)
    assert m["finished"] and m["best"] >= 0.90 and m["history"][0]["val/acc"] < 0.8, m["history"]
    assert m["weights"]["source"] == "package:efficientnet_lite0" and len(m["weights"]["sha256"]) == 64
    out = proc.stdout + proc.stderr
    assert "best checkpoint:" in out and "run folder:" in out
    print(f"demo: best val/acc {m['best']:.4f} at epoch {m['best_epoch']}, {time.time() - start:.0f}s")


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.accumulate=2", "trainer.clip_grad_norm=1.0"],
        ["model.freeze=backbone", "optimizer.lr=1e-2"],
        ["scheduler=plateau", "optimizer=sgd", "optimizer.lr=0.05"],
        ["scheduler=onecycle", "loss=dice", "optimizer.lr=5e-3"],
        ["scheduler=step", "scheduler.step_size=1", "loss=focal", "checkpoint.monitor=val/loss", "checkpoint.mode=min"],
    ],
    ids=["accumulate-clip", "frozen-backbone", "plateau-sgd", "onecycle-dice", "step-focal-minloss"],
)
@pytest.mark.slow
def test_training_settings_learn(compose_cfg, tmp_path, overrides):
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=3", "finetune.head_epochs=0", *overrides)
    run = build_run(cfg, run_dir=tmp_path)
    summary = run.fit()
    first, last = summary["history"][0], summary["history"][-1]
    assert summary["finished"] and last["train/loss"] < first["train/loss"], summary["history"]
    assert max(h["val/acc"] for h in summary["history"]) > 0.4, summary["history"]  # chance: 0.25
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    if "model.freeze=backbone" in overrides:
        assert all(not p.requires_grad for n, p in run.model.named_parameters() if n not in run.head_names)


@pytest.mark.slow
def test_evaluate_reads_a_checkpoint(tmp_path, finished_run):
    run_dir = finished_run
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.use.evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr
    acc = float(proc.stdout.split("val/acc ")[1].split()[0])
    assert acc == pytest.approx(metrics(run_dir)["best"], abs=1e-4)  # printed with 4 decimals
    assert "class3" in proc.stdout


@pytest.mark.slow
def test_imagefolder_run_on_generated_images(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for ci, (name, colour) in enumerate([("cat", (200, 60, 40)), ("dog", (40, 80, 200))]):
        (root / name).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(rng.normal(colour, 40, size=(40, 52, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    run_dir = tmp_path / "run"
    train(
        [
            "data=imagefolder",
            f"data.root={root}",
            "data.image_size=32",
            "data.batch_size=8",
            "model.name=test_resnet",
            "model.pretrained=false",
            "model.weights=null",
            "trainer.epochs=2",
            "finetune.head_epochs=0",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    m = metrics(run_dir)
    assert m["classes"] == ["cat", "dog"] and m["best"] >= 0.9, m["history"]


@pytest.mark.slow
def test_a_failing_sweep_job_is_listed_and_a_rerun_skips_finished_and_resumes_unfinished(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "optimizer.lr=-1,3e-3,1e-3",
        *TINY,
        "trainer.epochs=3",
        "checkpoint.every_n_steps=2",
        f"hydra.sweep.dir={sweep}",
    ]
    # first attempt: killed while job 2 is under way (job 0 failed, job 1 finished)
    proc = start_train(args, tmp_path)
    deadline = time.time() + HANG_GUARD
    while time.time() < deadline and proc.poll() is None:
        if (sweep / "2" / "checkpoints" / "last.pt").exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert metrics(sweep / "1")["finished"]
    assert not (sweep / "2" / "metrics.json").exists() or not metrics(sweep / "2")["finished"]
    finished_at = (sweep / "1" / "checkpoints" / "last.pt").stat().st_mtime_ns

    out = train(args, tmp_path, check=False)
    assert out.returncode == 3, out.stderr[-2000:]  # the summary is written, and the exit code says a job failed
    assert "1 job(s) of the sweep failed" in out.stderr
    assert (sweep / "1" / "checkpoints" / "last.pt").stat().st_mtime_ns == finished_at, "finished job re-run"
    assert "already finished" in (sweep / "1" / "train.log").read_text()
    assert "resumed from" in (sweep / "2" / "train.log").read_text()
    assert metrics(sweep / "2")["finished"]
    rows = {r["swept"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["optimizer.lr=-1"]["status"] == "failed"
    assert "optimizer.lr=-1 is not valid" in rows["optimizer.lr=-1"]["error"]
    assert rows["optimizer.lr=0.003"]["status"] == rows["optimizer.lr=0.001"]["status"] == "finished"
    assert list(rows)[-1] == "optimizer.lr=-1"  # failed jobs last
    assert "failed" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_save_and_resume_exactly(tmp_path, sig):
    args = [*TINY, "trainer.epochs=2", "checkpoint.every_n_steps=2", "data.dataset.train_size=512"]
    unbroken = tmp_path / "unbroken"
    train([*args, f"hydra.run.dir={unbroken}"], tmp_path)
    run_dir = tmp_path / "stopped"
    proc = start_train([*args, f"hydra.run.dir={run_dir}"], tmp_path, output=True)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 128 + sig, out
    assert f"Continue with: train resume={run_dir}" in out and "Traceback" not in out
    assert not metrics(run_dir)["finished"] if (run_dir / "metrics.json").exists() else True
    train([f"resume={run_dir}"], tmp_path)
    a, b = final_tensors(unbroken), final_tensors(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_keep_last_retention_and_checksums(tmp_path):
    run_dir = tmp_path / "run"
    train(
        [*TINY, "trainer.epochs=3", "checkpoint.every_n_steps=3", "checkpoint.keep_last=2", f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    folder = run_dir / "checkpoints"
    numbered = sorted(folder.glob("epoch*-step*.pt"))
    assert len(numbered) == 2 and numbered[-1].name.startswith("epoch003")
    for name in ("last.pt", "best.pt", *(p.name for p in numbered)):
        assert (folder / (name + ".sha256")).is_file(), name
    assert (folder / "last.pt").read_bytes() == numbered[-1].read_bytes()


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "flipped":  # same size, one byte changed: only the checksum can tell
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])


BROKEN = {"empty": "is empty", "truncated": "cannot be read", "garbage": "cannot be read", "flipped": "is corrupt"}


@pytest.mark.slow
def test_a_broken_checkpoint_gives_a_clear_error_naming_the_file(tmp_path, finished_run):
    """Each kind of damage read directly; one of them resumed through the real command (exit 2)."""
    from trainer.errors import UserError
    from trainer.runs.checkpoint import load_checkpoint

    last = finished_run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    for how, says in BROKEN.items():
        last.unlink()  # a hard link: replace it by a broken copy without touching the numbered file
        last.write_bytes(good)
        _corrupt(last, how)
        with pytest.raises(UserError) as refused:
            load_checkpoint(last)
        assert str(last) in str(refused.value) and (says in str(refused.value) or "is corrupt" in str(refused.value))
    proc = train([f"resume={last}", "trainer.epochs=2"], tmp_path, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2, err
    assert str(last) in err and "is corrupt" in err and "Traceback" not in err


@pytest.mark.slow
def test_resume_auto_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    args = [*TINY, "trainer.epochs=3", "checkpoint.every_n_steps=3", "data.dataset.train_size=512"]
    work = tmp_path / "w"
    work.mkdir()
    run_dir = kill_after_first_checkpoint(args, work)
    time.sleep(0.1)
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[:100])  # cut short, as a broken copy would be
    proc = train([*args, "resume=auto"], work)
    assert "falling back to the newest valid checkpoint" in proc.stderr
    assert metrics(run_dir)["finished"]


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, finished_run):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_dir = finished_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["extra"] = Evil()
    evil = run_dir / "checkpoints" / "evil.pt"
    torch.save(state, evil, pickle_module=pickle)
    proc = train([f"resume={evil}", "trainer.epochs=2"], tmp_path, check=False)
    assert proc.returncode == 2 and "Nothing in it was run" in proc.stdout + proc.stderr
    assert not marker.exists()
    model_weights = train(
        [*TINY, "model.pretrained=true", f"model.weights={evil}", "trainer.epochs=1"], tmp_path, check=False
    )
    assert model_weights.returncode == 2 and not marker.exists()


OWN_MODULE = """
import torch
import torch.nn.functional as F


class SmoothCE(torch.nn.Module):
    tasks = ("multiclass",)          # optional: the tasks it serves, checked when the run is built

    def __init__(self, eps=0.2):
        super().__init__()
        self.eps = eps

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, label_smoothing=self.eps)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


def halving(optimizer, steps_per_epoch):
    # run-time values (steps_per_epoch, total_steps, epochs) are passed when the signature names them
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.5)
"""


@pytest.mark.slow
def test_own_loss_optimizer_and_scheduler_from_a_config_folder_outside_the_package(tmp_path):
    """README: your own parts in your module, named by _target_ in your own YAML, found through hydra.searchpath."""
    (tmp_path / "my_parts.py").write_text(OWN_MODULE)
    conf = tmp_path / "myconf"
    for group, text in (
        ("loss", "_target_: my_parts.SmoothCE\neps: 0.2\n"),
        ("optimizer", "_target_: my_parts.SignSGD\n_partial_: true\nlr: 0.002\n"),
        (
            "scheduler",
            "# @package _global_\nscheduler:\n  _target_: my_parts.halving\n  _partial_: true\nschedule:\n  interval: step\n",
        ),
    ):
        (conf / group).mkdir(parents=True)
        (conf / group / "mine.yaml").write_text(text)
    args = [
        *TINY,
        "trainer.epochs=2",
        f"hydra.searchpath=[file://{conf}]",
        "loss=mine",
        "optimizer=mine",
        "scheduler=mine",
        "finetune.head_epochs=0",
    ]
    refused = train(args, tmp_path, check=False)
    assert refused.returncode == 2 and "allow_targets=[my_parts.]" in refused.stdout + refused.stderr
    run_dir = tmp_path / "run"
    done = train([*args, "allow_targets=[my_parts.]", f"hydra.run.dir={run_dir}"], tmp_path)
    assert "loss SmoothCE" in done.stdout + done.stderr and "SignSGD" in done.stdout + done.stderr
    m = metrics(run_dir)
    assert m["finished"]
    # the schedule halves the lr every epoch: 0.002 -> 0.001 -> 0.0005 after two epochs
    assert m["history"][-1]["lr"] == pytest.approx(0.0005)
    # a task the loss does not declare is refused with what fits
    wrong = train(
        [*args, "allow_targets=[my_parts.]", "data.task=binary", "data.dataset.num_classes=2"], tmp_path, check=False
    )
    assert (
        wrong.returncode == 2
        and "cannot train a binary task: it serves multiclass tasks" in wrong.stdout + wrong.stderr
    )
    evil = train([*TINY, "loss._target_=os.system", "trainer.epochs=1"], tmp_path, check=False)
    assert evil.returncode == 2 and "'os.system' is not allowed" in evil.stdout + evil.stderr


class _NaNOn:
    """Wraps a loss: NaN on the given calls (counted from 1)."""

    def __init__(self, loss, bad):
        self.loss, self.bad, self.calls = loss, set(bad), 0

    def to(self, device):
        return self

    def __call__(self, out, y):
        self.calls += 1
        value = self.loss(out, y)
        return value * float("nan") if self.calls in self.bad else value


def test_nonfinite_stop_keeps_the_last_good_checkpoint(compose_cfg, tmp_path):
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=0", "trainer.log_every=100"), run_dir=tmp_path
    )
    n = run.batches_per_epoch
    run.loss_fn = _NaNOn(run.loss_fn, {n + 2})  # in epoch 2
    with pytest.raises(UserError, match=r"became nan at step \d+ \(epoch 2\).*last checkpoint is the last good"):
        run.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_nonfinite_skip_skips_the_batch_and_trains_on(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=0", "trainer.nonfinite=skip"), run_dir=tmp_path
    )
    run.loss_fn = _NaNOn(run.loss_fn, {3, 5})
    summary = run.fit()
    assert run.skipped_steps == 2 and summary["finished"]
    assert run.state.global_step == 2 * run.batches_per_epoch - 2
    assert all(math.isfinite(h["train/loss"]) for h in summary["history"])


def test_out_of_memory_names_the_batch_size_and_what_to_change(compose_cfg, tmp_path):
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    run = build_run(compose_cfg(*TINY, "trainer.epochs=1"), run_dir=tmp_path)

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run.loss_fn = type("L", (), {"to": lambda self, d: self, "__call__": lambda self, *a: oom()})()
    with pytest.raises(UserError, match=r"data.batch_size=32.*data.batch_size \(e.g. 16\).*trainer.accumulate=2"):
        run.fit()


KILL_ARGS = [
    *TINY,
    "trainer.epochs=3",
    "finetune.head_epochs=1",
    "checkpoint.every_n_steps=3",
    "data.num_workers=2",
]  # 256 images, batch 32: 8 steps an epoch, 24 in all


@pytest.fixture(scope="module")
def unbroken_kill_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbroken")
    train([*KILL_ARGS, f"hydra.run.dir={root / 'run'}"], root)
    return final_tensors(root / "run")


@pytest.mark.slow
def test_batches_built_in_pieces_by_two_workers_train_like_one_process(tmp_path, unbroken_kill_run):
    """data.num_workers=2 at batch 32 loads each batch in two pieces joined on the device; the run
    must equal one loaded whole in the main process."""
    from trainer.data.loaders import pieces_per_batch

    assert pieces_per_batch(32, 2) == 2
    args = [a for a in KILL_ARGS if not a.startswith("data.num_workers")] + ["data.num_workers=0"]
    proc = train([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert "built by" not in proc.stdout + proc.stderr
    final = final_tensors(tmp_path / "run")
    different = [k for k in final if not torch.equal(final[k], unbroken_kill_run[k])]
    assert not different, different[:3]


@pytest.mark.parametrize(
    "point",
    ["epoch:1", "step:13", "save:3", "step:24"],
    ids=["epoch-boundary", "mid-epoch", "during-checkpoint-write", "last-batch"],
)
@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_auto_equals_the_unbroken_run(tmp_path, unbroken_kill_run, point):
    env = offline_env(tmp_path)
    env["TRAINER_FAILPOINT"] = point
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *KILL_ARGS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    (run_dir,) = list(tmp_path.glob("outputs/*/*"))
    assert not (run_dir / "metrics.json").exists() or not metrics(run_dir)["finished"]
    train([*KILL_ARGS, "resume=auto"], tmp_path)
    assert metrics(run_dir)["finished"]
    final = final_tensors(run_dir)
    assert final.keys() == unbroken_kill_run.keys()
    different = [k for k in final if not torch.equal(final[k], unbroken_kill_run[k])]
    assert not different, different[:3]


def test_negative_control_resume_without_the_sampler_position_differs(compose_cfg, tmp_path, monkeypatch):
    """The equality checks above can fail: forget where the epoch stopped, and the weights differ."""
    from trainer.data.loaders import EpochSampler
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=0")
    unbroken = build_run(cfg, run_dir=tmp_path / "a")
    unbroken.fit()
    expected = final_tensors(tmp_path / "a")

    def interrupted_then_resumed(folder):
        return interrupt_and_resume(cfg, folder, at_call=5)

    good = interrupted_then_resumed(tmp_path / "b")
    assert all(torch.equal(good[k], expected[k]) for k in expected)

    original = EpochSampler.set_epoch
    monkeypatch.setattr(EpochSampler, "set_epoch", lambda self, epoch, start=0: original(self, epoch, 0))
    bad = interrupted_then_resumed(tmp_path / "c")
    assert any(not torch.equal(bad[k], expected[k]) for k in expected)


def test_a_plateau_scheduler_run_resumes_exactly(compose_cfg, tmp_path):
    cfg = compose_cfg(
        *TINY,
        "trainer.epochs=4",
        "finetune.head_epochs=1",
        "scheduler=plateau",
        "scheduler.patience=0",
        "optimizer=sgd",
        "optimizer.lr=0.05",
    )
    from trainer.loop.build import build_run

    unbroken = build_run(cfg, run_dir=tmp_path / "a")
    unbroken.fit()
    expected = final_tensors(tmp_path / "a")
    resumed = interrupt_and_resume(cfg, tmp_path / "b", at_call=8 * 2 + 3)  # epoch 3, mid-epoch
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert unbroken.schedule.state_dict()["scheduler"]["num_bad_epochs"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["warmup_cosine", "onecycle"])
def test_extending_a_finished_run_gives_the_new_epochs_a_fresh_schedule(tmp_path, scheduler):
    run_dir = tmp_path / "run"
    train([*TINY, "trainer.epochs=2", f"scheduler={scheduler}", f"hydra.run.dir={run_dir}"], tmp_path)
    before = metrics(run_dir)
    final_lr = before["history"][-1]["lr"]
    proc = train([f"resume={run_dir}", "trainer.epochs=4"], tmp_path)
    assert "extending a finished run from 2 to 4 epochs" in proc.stdout + proc.stderr
    after = metrics(run_dir)
    assert after["finished"] and [h["epoch"] for h in after["history"]] == [1, 2, 3, 4]
    assert after["history"][:2] == before["history"]
    assert after["history"][2]["lr"] > 10 * final_lr  # the schedule restarted, not stuck at its end
    assert after["history"][3]["lr"] < after["history"][2]["lr"]  # and decays again


def test_fp16_steps_the_scaler_skips_do_not_advance_the_schedule(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(
            *TINY, "trainer.epochs=1", "finetune.head_epochs=0", "trainer.precision=fp16", "trainer.log_every=100"
        ),
        run_dir=tmp_path,
    )
    assert run.scaler.is_enabled()
    calls = {"n": 0}
    head_weight = next(p for n, p in run.model.named_parameters() if n in run.head_names and p.ndim == 2)

    def overflow_third_step(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 3 else grad

    head_weight.register_hook(overflow_third_step)
    run.fit()
    # one optimizer step was skipped by the scaler: the schedule moved one step less than the counter
    assert run.state.global_step == run.batches_per_epoch
    assert run.schedule.scheduler.last_epoch == run.state.global_step - 1


@pytest.mark.slow
def test_resume_with_other_classes_is_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (20, 20), (i * 20, 100 if name == "cat" else 10, 50)).save(root / name / f"{i}.png")
    run_dir = tmp_path / "run"
    args = [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.batch_size=4",
        "model.name=test_resnet",
        "model.pretrained=false",
        "model.weights=null",
        "trainer.epochs=1",
    ]
    train([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    (root / "fox").mkdir()
    for i in range(10):
        Image.new("RGB", (20, 20), (0, 0, i * 20)).save(root / "fox" / f"{i}.png")
    proc = train([f"resume={run_dir}", "trainer.epochs=2"], tmp_path, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "trained on classes ['cat', 'dog']" in err and "'fox'" in err
    proc = in_process("evaluate", [f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"], tmp_path)
    assert proc.returncode != 0 and "trained on classes ['cat', 'dog']" in proc.stderr


def test_hparams_show_the_essentials_then_what_the_command_line_set():
    from trainer.runs.tracking import chosen_hparams

    flat = {
        "seed": 1,
        "trainer.precision": "auto",
        "optimizer._target_": "torch.optim.SGD",
        "optimizer.lr": 0.1,
        "model.name": "resnet18",
        "data.name": "digits",
        "data.batch_size": 32,
        "trainer.epochs": 3,
        "loss._target_": "trainer.losses.DiceLoss",
    }
    chosen = chosen_hparams(flat, ["seed", "loss", "optimizer.lr"])
    assert list(chosen) == [
        "model.name",
        "data.name",
        "optimizer._target_",
        "optimizer.lr",
        "data.batch_size",
        "trainer.epochs",
        "seed",
        "loss._target_",
    ]
    assert "trainer.precision" not in chosen  # a default nobody changed stays off the table


@pytest.mark.slow
def test_a_run_killed_before_its_temperature_was_fit_fits_it_when_resumed(tmp_path):
    from trainer.runs.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"]
    proc = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "calibrate:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    best = run_dir / "checkpoints" / "best.pt"
    assert "calibration" not in load_checkpoint(best) and metrics(run_dir)["calibration"] is None
    out = train([*args, f"resume={run_dir}"], tmp_path)
    assert "fitting it now" in out.stdout + out.stderr
    stored = load_checkpoint(best)["calibration"]
    assert stored["temperature"][0] > 0 and metrics(run_dir)["calibration"] == stored
    assert (run_dir / "reliability.png").is_file()
