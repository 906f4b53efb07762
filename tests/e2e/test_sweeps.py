"""Sweeps on real launchers and sweepers: joblib in parallel, Optuna, submitit's local executor."""

from __future__ import annotations

import csv
import json

import pytest
from runner import train
from support import HANG_GUARD, TINY

QUICK = [*TINY, "trainer.epochs=1", "data.dataset.train_size=64", "data.dataset.val_size=32"]


def _rows(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def _check_summary(sweep_dir, n):
    """summary.csv holds each job's own best; summary.png exists."""
    from PIL import Image

    rows = _rows(sweep_dir)
    assert len(rows) == n
    for row in rows:
        if row["status"] == "finished":
            m = json.loads((sweep_dir / row["run_dir"].split("/")[-1] / "metrics.json").read_text())
            assert float(row["best"]) == pytest.approx(m["best"], abs=1e-9)
    assert Image.open(sweep_dir / "summary.png").size[1] >= 300  # matplotlib, labelled axes
    return rows


@pytest.mark.slow
def test_parallel_sweep_runs_jobs_at_once_in_their_own_processes(tmp_path):
    sweep = tmp_path / "sweep"
    out = train(
        [
            "-m",
            *QUICK,
            "optimizer.lr=1e-3,3e-3",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        check=False,
        env={"TRAINER_FAILPOINT": "oom:2", "TRAINER_FAILPOINT_JOB": "1"},  # job 1 runs out of memory at step 2
    )
    assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr
    assert out.returncode == 3 and "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    rows = {r["run_dir"].split("/")[-1]: r for r in _check_summary(sweep, 2)}
    assert rows["0"]["status"] == "finished"
    assert rows["1"]["status"] == "failed" and rows["1"]["error"].startswith(
        "out of memory on cpu at data.batch_size=32"
    )
    pids = {json.loads((sweep / j / "metrics.json").read_text())["pid"] for j in ("0", "1")}
    assert len(pids) == 2  # two worker processes
    assert "on 1 CPU threads" in (sweep / "0" / "train.log").read_text()  # 2 cores shared by 2 jobs


@pytest.mark.slow
def test_optuna_search_survives_failing_trials(tmp_path):
    conf = tmp_path / "myconf" / "hydra" / "sweeper"
    conf.mkdir(parents=True)
    # a search space with a batch size that fails its config check: those trials fail, the search goes on
    (conf / "tiny_search.yaml").write_text(
        "defaults:\n  - search\n  - _self_\nn_trials: 3\nparams:\n"
        "  optimizer.lr: tag(log, interval(1e-3, 1e-2))\n  data.batch_size: choice(0, 16)\n"
    )
    sweep = tmp_path / "sweep"
    out = train(
        [
            "-m",
            *QUICK,
            f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
            "hydra/sweeper=tiny_search",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=HANG_GUARD,
        check=False,
    )
    assert out.returncode == 3, out.stderr[-3000:]  # trials failed: said by the exit code, after the summary
    rows = _check_summary(sweep, 3)
    statuses = [r["status"] for r in rows]
    assert "finished" in statuses and "failed" in statuses, out.stdout[-2000:]
    import yaml

    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    finished = [float(r["best"]) for r in rows if r["status"] == "finished"]
    assert result["best_value"] == pytest.approx(max(finished))
    for r in rows:
        if r["status"] == "failed":
            assert "data.batch_size=0 is not valid" in r["error"]


@pytest.mark.slow
def test_submitit_local_executor_runs_a_sweep(tmp_path):
    pytest.importorskip("submitit")
    sweep = tmp_path / "sweep"
    train(
        [
            "-m",
            *QUICK,
            "optimizer.lr=1e-3,3e-3",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=HANG_GUARD,
    )
    rows = _check_summary(sweep, 2)
    assert {r["status"] for r in rows} == {"finished"}


def test_the_plot_holds_the_swept_values_and_their_results():
    from trainer.sweeps.summary import swept_points

    rows = [
        {"swept": "optimizer.lr=0.001 data.batch_size=16", "best": 0.8, "monitor": "val/acc"},
        {"swept": "optimizer.lr=0.01 data.batch_size=32", "best": 0.9, "monitor": "val/acc"},
        {"swept": "optimizer.lr=0.1 data.batch_size=16", "best": None, "monitor": ""},
    ]
    assert swept_points(rows) == {
        "optimizer.lr": [("0.001", 0.8), ("0.01", 0.9)],
        "data.batch_size": [("16", 0.8), ("32", 0.9)],
    }


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from support import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_ and launcher.gpus_per_node == 1 and launcher.partition == "gpu"


def test_plots_are_drawn_with_matplotlib_and_readable(tmp_path):
    import torch
    from PIL import Image

    from trainer.runs.plots import confusion_png, png_array, sweep_png, write_png

    points = {"optimizer.lr": [("0.0001", 0.5), ("0.01", 0.9)], "model": [("resnet18", 0.7), ("resnet34", 0.8)]}
    path = write_png(sweep_png(points, "val/acc"), tmp_path / "summary.png")
    width, height = Image.open(path).size
    assert width >= 900 and height >= 300  # two panels of about 500 x 400 px
    cm = png_array(confusion_png(torch.tensor([[5, 1], [2, 7]]), ["cat", "dog"]))
    assert cm.ndim == 3 and cm.shape[2] == 3 and min(cm.shape[:2]) >= 300
    assert "matplotlib.pyplot" in __import__("sys").modules  # drawn by matplotlib, not by hand


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_a_sweep_on_an_image_folder_with_loader_workers(tmp_path, launcher):
    """Loader workers inside a launcher's worker process (joblib's loky, submitit): their multiprocessing
    context is the loaders' own, not the launcher's."""
    from PIL import Image

    if launcher == "submitit_local":
        pytest.importorskip("submitit")
    for ci, name in enumerate(("red", "blue")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (24, 20), (200 * (1 - ci) + i, 30, 200 * ci)).save(tmp_path / "data" / name / f"{i}.png")
    model = [a for a in TINY if a.startswith("model.")]
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "parallel" else ["hydra.launcher.timeout_min=5"]
    out = train(
        [
            "-m",
            *model,
            "data=imagefolder",
            f"data.root={tmp_path / 'data'}",
            "data.image_size=32",
            "data.num_workers=1",
            "trainer.epochs=1",
            "optimizer.lr=1e-3,2e-3",
            f"hydra/launcher={launcher}",
            *extra,
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        check=False,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rows = _check_summary(sweep, 2)
    assert {r["status"] for r in rows} == {"finished"}
    assert "1 workers" in (sweep / "0" / "train.log").read_text()


@pytest.mark.slow
def test_a_parallel_sweep_job_killed_from_outside_is_recorded_and_resumed_by_a_rerun(tmp_path):
    """SIGKILL to one job's process (what the out-of-memory killer does): the job is recorded as failed with
    its signal, the other finishes, the summary is written, exit 3; a re-run resumes the killed job from
    its last checkpoint and skips the finished one."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *QUICK,
        "trainer.epochs=2",
        "checkpoint.every_n_steps=1",
        "optimizer.lr=1e-3,3e-3",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    ]
    out = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "step:3", "TRAINER_FAILPOINT_JOB": "1"})
    said = out.stdout + out.stderr
    assert out.returncode == 3, said[-3000:]
    rows = {r["run_dir"].split("/")[-1]: r for r in _check_summary(sweep, 2)}
    assert rows["0"]["status"] == "finished"
    assert rows["1"]["status"] == "failed" and "killed by SIGKILL" in rows["1"]["error"]
    assert (sweep / "1" / "checkpoints" / "last.pt").is_file()
    again = train(args, tmp_path, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    rows = {r["run_dir"].split("/")[-1]: r for r in _check_summary(sweep, 2)}
    assert {r["status"] for r in rows.values()} == {"finished"}
    assert "skipping it" in (sweep / "0" / "train.log").read_text()
    assert "resumed from" in (sweep / "1" / "train.log").read_text()


@pytest.mark.slow
def test_a_sweep_over_folds_is_a_cross_validation_with_mean_and_spread(tmp_path):
    import numpy as np

    sweep = tmp_path / "cv"
    out = train(["-m", *QUICK, "data.folds=3", "data.fold=range(3)", f"hydra.sweep.dir={sweep}"], tmp_path)
    entry = json.loads((sweep / "cv.json").read_text())[0]
    accs, held = [], []
    for job in ("0", "1", "2"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        accs.append(m["history"][m["best_epoch"] - 1]["val/acc"])
        log = (sweep / job / "train.log").read_text()
        held.append(int(log.split("training / ")[1].split(" validation")[0]))
    assert entry["folds"] == 3 and entry["mean"]["val/acc"] == pytest.approx(np.mean(accs))
    assert entry["std"]["val/acc"] == pytest.approx(np.std(accs))
    assert "cross-validation over 3 folds: val/acc" in out.stdout + out.stderr
    assert max(held) - min(held) <= 1  # the folds share the training images evenly
