"""Data-parallel training on this CPU: 2 processes, gloo, through torchrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runner import in_process, train
from support import HANG_GUARD, TINY, metrics, offline_env

DDP = [*TINY, "trainer.device=cpu", "data.dataset.train_size=192", "checkpoint.every_n_steps=2"]


def torchrun(args, cwd, env_extra=None, restarts=0, timeout=HANG_GUARD):
    env = offline_env(cwd)
    env.update(env_extra or {})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            f"--max-restarts={restarts}",
            "-m",
            "trainer",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tensors(run_dir: Path):
    from trainer.runs.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    out = {f"model.{k}": v for k, v in state["model"].items()}
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out, state


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_move_between_them(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train([*DDP, "trainer.epochs=3", "data.batch_size=16", f"hydra.run.dir={single}"], tmp_path)
    out = train([*DDP, "trainer.epochs=3", "data.batch_size=8", "trainer.devices=2", f"hydra.run.dir={ddp}"], tmp_path)
    log = out.stdout + out.stderr
    assert "starting 2 processes: torchrun --standalone --nproc_per_node=2" in log
    assert "distributed: 2 processes (gloo)" in log
    one, two = metrics(single), metrics(ddp)
    # the same effective batch (2 x 8 = 16) and number of steps: accuracy in line with one process
    assert two["global_step"] == one["global_step"]
    assert two["best"] >= 0.7 and abs(two["best"] - one["best"]) <= 0.15, (one["history"], two["history"])
    assert (ddp / "train.log").read_text().count("epoch 3/3") == 1  # rank 0 alone logs
    # the DDP checkpoint, in one process: the same val accuracy as the sharded, all-reduced evaluation
    proc = in_process("evaluate", [f"checkpoint={ddp / 'checkpoints' / 'last.pt'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    acc = float(proc.stdout.split("val/acc ")[1].split()[0])
    assert acc == pytest.approx(two["history"][-1]["val/acc"], abs=1e-4)
    # and on: the DDP run continued in one process, the single run continued in two
    train([f"resume={ddp}", "trainer.epochs=4"], tmp_path)
    assert metrics(ddp)["epochs_done"] == 4 and metrics(ddp)["finished"]
    train([f"resume={single}", "trainer.epochs=4", "trainer.devices=2"], tmp_path)
    assert metrics(single)["epochs_done"] == 4 and metrics(single)["finished"]


@pytest.mark.slow
def test_a_killed_rank_is_restarted_by_torchrun_and_resumes_to_the_unbroken_result(tmp_path):
    args = [*DDP, "trainer.epochs=2", "data.batch_size=8", "data.augment=flip_crop"]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    done = torchrun([*args, f"hydra.run.dir={unbroken}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 1 is SIGKILLed at its 7th optimizer step (epoch 1 of 2, after the step-6 checkpoint)
    proc = torchrun(
        [*args, f"hydra.run.dir={broken}"],
        tmp_path,
        restarts=1,
        env_extra={"TRAINER_FAILPOINT": "step:7", "TRAINER_FAILPOINT_RANK": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr and "restart 1 of torchrun run" in proc.stderr
    expected, _ = _tensors(unbroken)
    got, state = _tensors(broken)
    assert metrics(broken)["finished"] and state["world_size"] == 2
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), [
        k for k in expected if not torch.equal(got[k], expected[k])
    ][:5]
    assert metrics(broken)["history"] == [
        {**h, "seconds": b["seconds"]} for h, b in zip(metrics(unbroken)["history"], metrics(broken)["history"])
    ]


@pytest.mark.slow
def test_devices_with_a_sweep_and_sync_bn_on_cpu_are_refused_with_the_alternative(tmp_path):
    out = train(["-m", *TINY, "trainer.devices=2", "optimizer.lr=1e-3,1e-2"], tmp_path, check=False)
    assert out.returncode == 2 and "does not combine with -m: sweep with hydra/launcher=parallel" in out.stderr
    out = torchrun([*TINY, "trainer.device=cpu", "trainer.sync_bn=true", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert (
        out.returncode != 0
        and "trainer.sync_bn=true on a CPU (SyncBatchNorm runs on GPUs only)" in out.stdout + out.stderr
    )
