"""The command line as a user types it: help, config printing, and mistakes with clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from runner import final_tensors, python, train
from support import HANG_GUARD, REPO, TINY, offline_env

NO_HEAVY_IMPORTS = """
import sys
sys.argv = ["train", *sys.argv[1:]]
from trainer.cli.train import main
try:
    main()
except SystemExit:
    pass
print("HEAVY:", sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules))
"""


def test_help_lists_groups_and_options_without_importing_torch(tmp_path):
    proc = python(["-c", NO_HEAVY_IMPORTS, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("model: ", "data: digits, fake, hf, imagefolder", "loss: ", "optimizer: ", "scheduler: "):
        assert line in out
    assert "efficientnet_lite0" in out and "tv_resnet50" in out and "warmup_cosine" in out
    assert "HEAVY: []" in out


def test_cfg_job_prints_resolved_config_without_torch(tmp_path):
    proc = python(["-c", NO_HEAVY_IMPORTS, "--cfg", "job", "model=resnet34", "optimizer.lr=0.01"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: resnet34" in proc.stdout and "lr: 0.01" in proc.stdout
    assert "seed: 0" in proc.stdout  # interpolations resolved (data.dataset.seed)
    assert "HEAVY: []" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_unknown_option_names_the_available_ones(tmp_path):
    proc = train(["model=nosuch"], tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "nosuch" in err and "efficientnet_lite0" in err and "resnet34" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_resnet34_without_network_or_cache_says_how_to_give_weights(tmp_path):
    proc = train(["model=resnet34", "loss=dice", "trainer.epochs=1"], tmp_path, check=False, timeout=HANG_GUARD)
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "model.weights=/path/to/file.pth" in err and ".safetensors" in err
    assert "model.pretrained=false" in err
    assert "Traceback" not in err
    assert "epoch 1/" not in err  # stopped before training


def test_imagefolder_without_root_is_a_clear_error(tmp_path):
    proc = train(
        ["data=imagefolder", "model.name=test_resnet", "model.pretrained=false", "model.weights=null"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "data.root" in err and "Traceback" not in err


def test_missing_data_folder_is_a_clear_error(tmp_path):
    proc = train(
        [
            "data=imagefolder",
            f"data.root={tmp_path / 'nope'}",
            "model.name=test_resnet",
            "model.pretrained=false",
            "model.weights=null",
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "no such folder" in err and "nope" in err and "Traceback" not in err


@pytest.mark.slow
def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    import torch

    torch.save({"foo.weight": torch.zeros(3, 3)}, tmp_path / "w.pth")
    proc = train(
        ["model.name=test_resnet", f"model.weights={tmp_path / 'w.pth'}", "data=fake", "trainer.epochs=1"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "does not fit test_resnet" in err and "missing" in err and "unexpected" in err


def test_console_script_is_installed():
    assert (REPO / "pyproject.toml").read_text().count('train = "trainer.cli.entry:train"') == 1


CONFIG_MISTAKES = [
    (["trainer.epoch=3"], ["no key 'epoch' in trainer", "Did you mean trainer.epochs?"]),
    (["optimizer.lrr=0.1"], ["no key 'lrr' in optimizer", "optimizer.lr?"]),
    (["model=resnet35"], ["model=resnet35: there is no such option", "resnet34", "efficientnet_lite0"]),
    (["trainer.epochs=0"], ["trainer.epochs=0 is not valid", "an integer >= 1"]),
    (["optimizer.lr=-1"], ["optimizer.lr=-1 is not valid", "a number > 0"]),
    (["trainer.epochs=abc"], ["trainer.epochs='abc' is not valid"]),
    (["data.val_split=1.5"], ["data.val_split=1.5 is not valid", "between 0 and 1"]),
    (["checkpoint.monitor=accuracy"], ["checkpoint.monitor='accuracy' is not valid", "val/acc"]),
    (["optimizer.lr=["], ["cannot read the override 'optimizer.lr=['", "override_grammar"]),
    (
        ["data.root=/x/my", "data/ünï", "数据"],  # an unquoted path with spaces, split by the shell
        ["'data/ünï' is not a key=value override", "'data.root=/x/my data/ünï 数据'"],
    ),
    (["-m", "optimizer.lrr=0.1,0.2"], ["optimizer.lrr=0.1: there is no key 'lrr' in optimizer", "optimizer.lr?"]),
    (["-m", "optimizer.lr=interval(0.1,0.2)"], ["only a search sweeper", "hydra/sweeper=search"]),
    (["model.head.hidden=-5"], ["model.head.hidden=-5 is not valid", "an integer >= 1"]),
    (["optimizer.betas=[]"], ["optimizer.betas=[] is not valid", "two numbers in [0, 1)"]),
]


@pytest.mark.parametrize("args,expected", CONFIG_MISTAKES, ids=[" ".join(a[0]) for a in CONFIG_MISTAKES])
def test_config_mistakes_get_one_clear_paragraph_and_exit_2(tmp_path, args, expected):
    proc = subprocess.run(
        [sys.executable, "-c", NO_HEAVY_IMPORTS, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0  # the wrapper swallows SystemExit; the code is checked below
    err = proc.stderr
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "HEAVY: []" in proc.stdout  # answered before torch was imported
    code = subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=tmp_path,
        capture_output=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    ).returncode
    assert code == 2


def test_help_shows_every_group_option_and_the_composed_defaults_with_overrides(tmp_path):
    from trainer.cli.help import group_options

    proc = train(["--help", "optimizer=sgd", "trainer.epochs=3"], tmp_path)
    out = proc.stdout
    for group, options in group_options().items():
        assert f"{group}: {', '.join(options)}" in out
    assert "_base" not in out.split("Defaults and every key")[0]  # shared keys are no option
    assert "_target_: torch.optim.SGD" in out and "epochs: 3" in out and "Examples:" in out
    bad = train(["--help", "model=resnet99"], tmp_path, check=False)
    assert bad.returncode == 2 and "Did you mean model=resnet50" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("model.bn=frozen", "finetune.bn"),
        ("optimizer.backbone_lr_mult=1", "finetune.backbone_lr_mult"),
        ("scheduler.warmup_epochs=1", None),
    ],  # warmup_cosine (the default) has its own warmup_epochs
)
def test_a_key_that_moved_names_its_new_place(tmp_path, old, new):
    proc = train([old, "--cfg", "job"], tmp_path, check=False)
    if new is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2 and f"is now {new}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_users_config_dir_home_paths_and_chdir_work_as_in_hydra(tmp_path):
    import numpy as np
    from PIL import Image

    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "mynet.yaml").write_text("defaults:\n  - _base\n  - _self_\nname: test_resnet\npretrained: false\n")
    home = tmp_path / "home"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (home / "pets" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(home / "pets" / c / f"{i}.png")
    tiny = ["trainer.epochs=1", "data.image_size=32", "data=imagefolder"]
    env = {"HOME": str(home)}
    # --config-dir adds an option; a value starting with ~ is the home folder, typed unquoted
    done = train(
        ["--config-dir", str(tmp_path / "myconf"), "model=mynet", "data.root=~/pets", *tiny], tmp_path, env=env
    )
    assert "building model test_resnet" in done.stderr + done.stdout
    refused = train(["--config-dir", str(tmp_path / "myconf"), "model=mynot"], tmp_path, check=False)
    assert refused.returncode == 2 and "Did you mean model=mynet?" in refused.stderr
    # hydra.job.chdir=true: the run works in its folder; a relative data.root is still the launch folder's
    (tmp_path / "data").symlink_to(home / "pets")
    run = tmp_path / "chdir_run"
    model = [a for a in TINY if a.startswith("model.")]
    train([*model, "data.root=data", "hydra.job.chdir=true", f"hydra.run.dir={run}", *tiny], tmp_path)
    assert (run / "checkpoints" / "best.pt").is_file()
    assert "root: data" in (run / ".hydra" / "config.yaml").read_text()  # as typed; the checkpoint holds it absolute


EXIT_AFTER = """
import logging, sys, threading
from trainer.cli.entry import exit_after
case = sys.argv[1]
log = logging.getLogger("t")
log.addHandler(logging.FileHandler(sys.argv[2]))
log.warning("written before the exit")
if case == "thread":  # a non-daemon thread still running: Python's own shutdown, which waits for it
    threading.Thread(target=lambda: (__import__("time").sleep(0.5), open(sys.argv[2] + ".thread", "w").close())).start()
exit_after({"ok": lambda: print("done"), "code": lambda: sys.exit(3), "message": lambda: sys.exit("bad value"),
            "thread": lambda: sys.exit(4)}[case])
"""


@pytest.mark.parametrize("case,code", [("ok", 0), ("code", 3), ("message", 1), ("thread", 4)])
def test_the_fast_exit_keeps_exit_codes_and_output_and_lets_running_threads_finish(tmp_path, case, code):
    log = tmp_path / "log.txt"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_AFTER, case, str(log)], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert proc.returncode == code, proc.stderr
    assert log.read_text() == "written before the exit\n"
    assert ("done" in proc.stdout) == (case == "ok") and ("bad value" in proc.stderr) == (case == "message")
    assert (tmp_path / "log.txt.thread").exists() == (case == "thread")


def test_a_run_inside_the_test_process_equals_the_real_command(tmp_path, monkeypatch):
    """The suite runs most `train` commands inside its own process; this holds that to the subprocess:
    the same weights, exit code and error, and nothing left running afterwards."""
    import multiprocessing
    import threading

    args = [*TINY, "trainer.epochs=1", "data.num_workers=2"]
    threads = set(threading.enumerate())
    inside = train([*args, f"hydra.run.dir={tmp_path / 'inside'}"], tmp_path)
    left = [t.name for t in set(threading.enumerate()) - threads if t.name != "tqdm_monitor"]  # tqdm's, for life
    assert not multiprocessing.active_children() and not left, left
    bad_inside = train([*TINY, "trainer.epochs=0"], tmp_path, check=False)
    monkeypatch.setenv("TRAINER_TEST_SUBPROCESS", "1")
    outside = train([*args, f"hydra.run.dir={tmp_path / 'outside'}"], tmp_path)
    bad_outside = train([*TINY, "trainer.epochs=0"], tmp_path, check=False)
    a, b = final_tensors(tmp_path / "inside"), final_tensors(tmp_path / "outside")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "best" in inside.stdout + inside.stderr and "best" in outside.stdout + outside.stderr
    assert bad_inside.returncode == bad_outside.returncode == 2
    assert bad_inside.stderr.strip() == bad_outside.stderr.strip()
