"""A config from a file someone else wrote must never run code: stored overrides, a checkpoint's
embedded config, the command line. Each payload would create a marker file if it were built."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from runner import start_train, train, wait_for
from support import HANG_GUARD, TINY

from trainer.errors import UserError


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def payloads(tmp_path) -> dict[str, dict]:
    """Name -> a config node that creates ``tmp_path/marker`` when Hydra instantiates it."""
    marker = str(tmp_path / "marker")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Touch(marker)))
    hub = tmp_path / "hubrepo"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(f"open({marker!r}, 'w')\ndef x():\n    return None\n")
    (tmp_path / "evilmod.py").write_text(f"open({marker!r}, 'w')\n")
    touch = {"_target_": "os.system", "command": f"touch {marker}"}
    return {
        "torch.load": {"_target_": "torch.load", "f": str(evil), "weights_only": False},
        "torch.hub.load": {"_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "x", "source": "local"},
        "torch.jit.load": {"_target_": "torch.jit.load", "f": str(evil)},
        "torch.save": {"_target_": "torch.save", "obj": 1, "f": marker},
        "os.system": touch,
        "subprocess.Popen": {"_target_": "subprocess.Popen", "args": ["touch", marker]},
        "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({marker!r}, 'w')"]},
        "importlib.import_module": {"_target_": "importlib.import_module", "name": "evilmod"},
        "pickle.loads": {"_target_": "pickle.loads", "data": "x"},
        "hydra.utils.call": {"_target_": "hydra.utils.call", "config": touch},
        "functools.partial": {
            "_target_": "functools.partial",
            "_args_": [{"_target_": "hydra.utils.get_method", "path": "os.system"}, f"touch {marker}"],
        },
        "_partial_ torch.save": {"_target_": "torch.save", "_partial_": True, "obj": 1, "f": marker},
        "nested in _args_": {"_target_": "torch.nn.Sequential", "_args_": [touch]},
        "interpolated target": {"_target_": "${oc.decode:'torch.save'}", "obj": 1, "f": marker},
    }


NAMES = [
    "torch.load",
    "torch.hub.load",
    "torch.jit.load",
    "torch.save",
    "os.system",
    "subprocess.Popen",
    "builtins.exec",
    "importlib.import_module",
    "pickle.loads",
    "hydra.utils.call",
    "functools.partial",
    "_partial_ torch.save",
    "nested in _args_",
    "interpolated target",
]


def _hydra_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    return f'"{v}"'


def _override(node: dict) -> str:
    """The payload as a command-line override of loss.weight, in Hydra's override grammar."""
    return "loss.weight=" + _hydra_value(node)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _build(overrides: list[str], run_dir):
    from trainer.config.schema import compose_config
    from trainer.loop.build import build_run

    return build_run(compose_config(overrides), run_dir=run_dir)


@pytest.mark.parametrize("name", NAMES)
def test_a_payload_on_the_command_line_is_refused_and_nothing_runs(in_tmp, name):
    node = payloads(in_tmp)[name]
    with pytest.raises(UserError, match="is not allowed to be built"):
        _build([*TINY, _override(node)], in_tmp / "run")
    assert not (in_tmp / "marker").exists()
    assert "evilmod" not in sys.modules


@pytest.mark.parametrize("name", NAMES)
def test_a_payload_in_a_run_folders_stored_overrides_is_refused(in_tmp, name):
    from trainer.runs.resume import resolve_resume

    run = in_tmp / "shared_run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"not read before the check")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY, _override(payloads(in_tmp)[name])]))
    argv = resolve_resume([f"resume={run}"])
    overrides = [a for a in argv if not a.startswith(("resume=", "hydra."))]
    with pytest.raises(UserError, match="is not allowed to be built"):
        _build(overrides, run)
    assert not (in_tmp / "marker").exists()


@pytest.mark.parametrize("name", NAMES)
def test_a_payload_in_a_checkpoints_embedded_config_is_refused(in_tmp, name):
    from trainer.config.schema import compose_config
    from trainer.use.evaluate import evaluate
    from trainer.use.export import export

    cfg = compose_config(TINY)
    cfg.loss.weight = OmegaConf.create(payloads(in_tmp)[name])
    ckpt = in_tmp / "best.pt"
    torch.save({"model": {}, "epoch": 1, "classes": ["a", "b"], "config": OmegaConf.to_yaml(cfg)}, ckpt)
    with pytest.raises(UserError, match="is not allowed to be built"):
        evaluate({"checkpoint": str(ckpt), "data.root": "", "out": "", "trainer.device": "cpu", "allow_targets": ""})
    for fmt in ("safetensors", "onnx"):
        with pytest.raises(UserError, match="is not allowed to be built"):
            export(str(ckpt), fmt, in_tmp / "export")
    assert not (in_tmp / "marker").exists()


def test_allow_targets_stored_in_a_run_folder_is_not_trusted(in_tmp, capsys):
    from trainer.runs.resume import resolve_resume

    run = in_tmp / "shared_run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    stored = [*TINY, "allow_targets=[os.]", "+hydra.callbacks.x._target_=os.system", "loss._target_=os.system"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(stored))
    argv = resolve_resume([f"resume={run}"])
    assert not any(a.startswith(("allow_targets", "+hydra.callbacks")) for a in argv)
    assert "not taking 'allow_targets=[os.]'" in capsys.readouterr().err


def test_what_a_config_may_build():
    from trainer.config.targets import check_targets, why_refused

    for ok in (
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.StepLR",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "torch.nn.CrossEntropyLoss",
        "trainer.losses.DiceLoss",
        "trainer.loop.schedules.warmup_cosine",
        "trainer.data.datasets.load_imagefolder",
        "trainer.models.create_model",
        "torchvision.transforms.v2.RandomResizedCrop",
    ):
        assert why_refused(ok) is None, ok
    for bad in (
        "trainer.runs.checkpoint.atomic_write_bytes",  # ours, but it writes files
        "torchvision.datasets.CIFAR10",  # unpickles the files under its root
        "timm.create_model",  # loads pretrained files named in its arguments
        "torch.jit.ScriptModule",
        "trainer.__main__.main",  # importing it would run the command
    ):
        assert why_refused(bad) is not None, bad
    check_targets({"loss": {"_target_": "my_pkg.MyLoss"}}, extra=("my_pkg.",))


@pytest.mark.slow
def test_resuming_a_doctored_run_folder_runs_nothing(tmp_path, finished_run):
    """The reported case, through the real command: a shared run folder whose stored overrides
    load a pickle with torch.load(weights_only=False)."""
    run = finished_run
    evil = payloads(tmp_path)["torch.load"]
    stored = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*stored, _override(evil)]))
    proc = train([f"resume={run}", "trainer.epochs=2"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "'torch.load' is not allowed to be built" in out
    assert not (tmp_path / "marker").exists()


def _flip_a_tensor_byte(path, tensor) -> None:
    """Change one byte inside ``tensor``'s data in the file (same size: only a digest can tell)."""
    data = path.read_bytes()
    # the bytes as stored: a channels_last weight is saved in its memory order
    raw = torch.tensor([], dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tobytes()
    at = data.find(raw)
    assert at > 0, "tensor bytes not found in the file"
    i = at + len(raw) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])


def test_a_checkpoint_carries_its_own_digest(tmp_path):
    from trainer.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint

    w = torch.randn(64, 32)
    state = {
        "model": {"w": w, "b16": torch.ones(3, dtype=torch.bfloat16), "n": torch.tensor(3)},
        "epoch": 2,
        "rng": rng_state(),
        "history": [{"val/acc": 0.5}],
        "classes": ("a", "b"),
    }
    path = save_checkpoint(state, tmp_path / "run" / "checkpoints" / "last.pt")
    assert torch.equal(load_checkpoint(path)["model"]["w"], w)  # the digest matches after a round trip
    copy = tmp_path / "elsewhere.pt"  # copied without its .sha256 file, as users do
    copy.write_bytes(path.read_bytes())
    _flip_a_tensor_byte(copy, w)
    with pytest.raises(UserError, match=f"checkpoint '{copy}' is corrupt: its contents do not match the digest"):
        load_checkpoint(copy)
    from trainer.models.weights import read_state_dict

    with pytest.raises(UserError, match="is corrupt"):
        read_state_dict(copy)


@pytest.mark.slow
def test_a_flipped_byte_without_a_sidecar_is_refused_and_resume_auto_falls_back(tmp_path):
    from trainer.runs.checkpoint import load_checkpoint

    args = [*TINY, "trainer.epochs=1", "checkpoint.every_n_steps=2"]
    run = tmp_path / "outputs" / "run"
    train([*args, f"hydra.run.dir={run}"], tmp_path)
    last = run / "checkpoints" / "last.pt"
    weight = max(load_checkpoint(last)["model"].values(), key=lambda t: t.numel())
    copy = tmp_path / "copied.pt"
    copy.write_bytes(last.read_bytes())
    _flip_a_tensor_byte(copy, weight)
    for given in ([f"resume={copy}"], [f"model.weights={copy}", "model.pretrained=true"]):
        proc = train([*TINY, *given, "trainer.epochs=2"], tmp_path, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and str(copy) in out and "is corrupt" in out and "Traceback" not in out, out
    # in the run folder, a corrupt last.pt whose sidecar is gone: resume=auto takes the newest valid one
    (run / "metrics.json").unlink()  # not finished, so resume=auto considers it
    last.unlink()
    (run / "checkpoints" / "last.pt.sha256").unlink()
    copy.rename(last)
    proc = train([*args, "resume=auto"], tmp_path)
    assert "falling back to the newest valid checkpoint" in proc.stderr and "is corrupt" in proc.stderr


@pytest.mark.slow
def test_a_job_that_crashes_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.epochs=1", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"]
    proc = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "crash:3", "TRAINER_FAILPOINT_JOB": "0"})
    assert proc.returncode == 3 and "1 job(s) of the sweep failed" in proc.stderr, proc.stderr[-3000:]
    import csv

    rows = {r["run_dir"].split("/")[-1]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["1"]["status"] == "finished"
    assert rows["0"]["status"] == "failed" and rows["0"]["error"] == "RuntimeError: failpoint crash"
    assert "Traceback" in (sweep / "0" / "error.log").read_text()  # the details, in the job's folder
    assert json.loads((sweep / "0" / "metrics.json").read_text())["log"] == str(sweep / "0" / "error.log")


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_second_run_in_a_folder_in_use_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    import signal

    run = tmp_path / "X"
    args = [*TINY, "trainer.epochs=30", "data.dataset.train_size=512", f"hydra.run.dir={run}"]
    first = start_train([*args, "seed=0"], tmp_path)
    try:
        wait_for(run / "checkpoints" / "last.pt", first)
        assert first.poll() is None, "the first run ended before the test could overlap it"
        before = (run / ".hydra" / "config.yaml").read_bytes()
        second = train([*args, "seed=1", "trainer.epochs=1"], tmp_path, check=False)
        out = second.stdout + second.stderr
        assert second.returncode == 2 and "Traceback" not in out, out
        assert f"run folder '{run}' is in use by process {first.pid}" in out
        assert (run / ".hydra" / "config.yaml").read_bytes() == before  # the first run's record is intact
        assert "seed=1" not in (run / "train.log").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # the kernel dropped the lock with the killed process: the run resumes in its folder
    proc = train([f"resume={run}", "trainer.epochs=2"], tmp_path)
    assert "resuming" in proc.stderr


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_folder_byte_for_byte(tmp_path, finished_run):
    run = finished_run
    before = _snapshot(run)
    for change in ("model.head.hidden=16", "model.name=resnet_nope"):  # refused at load, refused at build
        proc = train([f"resume={run}", change], tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
        assert _snapshot(run) == before, change
    train([f"resume={run}", "trainer.epochs=2"], tmp_path)  # the folder still resumes as it was
    assert json.loads((run / "metrics.json").read_text())["finished"]


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    from trainer.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=3", f"hydra.run.dir={run}"]
    proc = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "enospc:3"})  # the third save fails
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4 and "Traceback" not in out, out
    assert "the disk is full (No space left on device)" in out
    assert f"The previous checkpoint is intact: {run / 'checkpoints' / 'last.pt'}" in out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert not list(run.rglob("*.tmp"))
    ro = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "erofs:1"})
    assert ro.returncode == 2 and "Read-only file system" in ro.stdout + ro.stderr
    assert "Traceback" not in ro.stdout + ro.stderr


def test_a_run_folder_that_cannot_be_written_is_refused_at_once(tmp_path, monkeypatch):
    from trainer.cli.train import check_writable

    monkeypatch.chdir(tmp_path)
    check_writable(["hydra.run.dir=a/new/folder"])  # created later, under a writable folder
    monkeypatch.setattr("os.access", lambda path, mode: str(path) != str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    with pytest.raises(UserError, match=f"cannot write the run folder 'ro/run': {tmp_path / 'ro'} is read-only"):
        check_writable(["hydra.run.dir=ro/run"])
    with pytest.raises(UserError, match="give hydra.sweep.dir="):
        check_writable(["-m", "hydra.sweep.dir=ro/sweep"])


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_is_reported_once_and_stale_temp_files_are_cleaned(tmp_path):
    import os
    import signal
    import time

    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=20", "data.num_workers=2", "data.dataset.train_size=512", f"hydra.run.dir={run}"]
    proc = start_train(args, tmp_path, output=True, start_new_session=True)  # its own group, as a foreground job
    wait_for(run / "checkpoints" / "last.pt", proc)
    time.sleep(0.5)  # the workers of the next epoch are up
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group gets it
    out, _ = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert out.count("SIGINT received") == 1, out
    # a writer killed mid-save left a temp file: the next start removes it
    stale = run / "checkpoints" / ".last.pt.999999.tmp"
    stale.write_bytes(b"half a checkpoint")
    train([f"resume={run}", "trainer.epochs=2"], tmp_path, check=False)
    assert not stale.exists()
