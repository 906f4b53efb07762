"""Files someone else wrote stay harmless (an alias-bomb config answers in seconds), a command replaces
only files of its own kind, and Ctrl-C to predict / evaluate / export gives one line, exit 130 and no
half-written file. Through the real commands."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from runner import ctrl_c_reaches_it, in_process, train
from support import TINY, offline_env

from trainer.config.untrusted import load_config, load_yaml, read_yaml
from trainer.errors import UserError
from trainer.runs.checkpoint import load_checkpoint, save_checkpoint

# Nine references per level, nine levels: 429 bytes for PyYAML (which shares them), ~43 million nodes
# once OmegaConf copies every reference.
_LEVELS = "abcdefghi"
BOMB = (
    "\n".join(
        [f"a: &a [{','.join(['x'] * 9)}]"]
        + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip(_LEVELS, _LEVELS[1:])]
    )
    + "\n"
)
BOUNDED = 120  # seconds: the bomb once ran for minutes; an answer is a second or two, this only guards a hang


def _entry(command: str, args: list[str], cwd, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The console script itself (trainer.cli.entry), as its own process."""
    code = f"from trainer.cli.entry import {command}; {command}()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env={**offline_env(cwd), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )


def _finish(proc: subprocess.Popen, timeout: float = BOUNDED) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no answer within {timeout}s")
    return proc.returncode, out + err


def test_the_untrusted_reader_refuses_aliases_size_and_depth_and_reads_our_own(tmp_path, finished_run):
    assert len(BOMB) < 500
    with pytest.raises(UserError, match="alias|anchor"):
        load_yaml(BOMB, "bomb.yaml")
    with pytest.raises(UserError, match="bytes"):
        load_yaml(b"a: " + b"x" * (5 * 1024 * 1024), "big.yaml")
    with pytest.raises(UserError, match="deeper"):
        load_yaml("[" * 200 + "]" * 200, "deep.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml("a: [", "broken.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (5 * 1024 * 1024))
    with pytest.raises(UserError, match=str(big)):
        read_yaml(big)
    # what this tool writes reads back the same as PyYAML reads it
    import yaml

    for f in (finished_run / ".hydra").glob("*.yaml"):
        assert read_yaml(f) == yaml.safe_load(f.read_text())
    state = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    assert load_config(state["config"], "x").trainer.epochs == 1


def test_an_alias_bomb_in_a_checkpoints_config_is_refused_in_seconds(tmp_path, finished_run):
    ckpt = finished_run / "checkpoints" / "best.pt"
    state = load_checkpoint(ckpt)
    state["config"] = BOMB
    save_checkpoint(state, ckpt)  # the digest inside recomputed, as anyone can
    start = time.monotonic()
    code, out = _finish(_entry("evaluate", [f"checkpoint={ckpt}"], tmp_path))
    assert code == 2 and "Traceback" not in out, out[-2000:]
    assert str(ckpt) in out and "alias" in out
    assert time.monotonic() - start < BOUNDED


def test_resume_auto_skips_a_run_folder_with_an_alias_bomb_config(tmp_path):
    bad = tmp_path / "outputs" / "2026-01-01" / "00-00-00"
    (bad / ".hydra").mkdir(parents=True)
    (bad / "checkpoints").mkdir()
    (bad / "checkpoints" / "last.pt").write_bytes(b"never read")
    (bad / ".hydra" / "config.yaml").write_text(BOMB)
    out = train([*TINY, "trainer.epochs=1", "resume=auto"], tmp_path, timeout=BOUNDED * 3, env={"TRAINER_T": "1"})
    text = out.stdout + out.stderr
    assert f"skipping {bad.relative_to(tmp_path)}" in text and "alias" in text
    assert "starting a new run" in text


def _image_folder(root) -> None:
    for ci, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.new("RGB", (20, 20), (220 * ci, 40 + i, 90)).save(root / name / f"{i}.png")


def test_predict_out_never_replaces_a_checkpoint_and_replaces_its_own_csv(tmp_path, finished_run):
    _image_folder(tmp_path / "new")
    best = finished_run / "checkpoints" / "best.pt"
    before = best.read_bytes()
    proc = in_process("predict", [f"checkpoint={finished_run}", f"source={tmp_path / 'new'}", f"out={best}"], tmp_path)
    assert proc.returncode == 2 and str(best) in proc.stderr and "not a predictions CSV" in proc.stderr
    assert best.read_bytes() == before
    for target in (finished_run / "checkpoints", finished_run / ".hydra" / "config.yaml"):
        proc = in_process(
            "predict", [f"checkpoint={finished_run}", f"source={tmp_path / 'new'}", f"out={target}"], tmp_path
        )
        assert proc.returncode == 2 and str(target) in proc.stderr, proc.stderr
    csv = tmp_path / "preds.csv"
    for _ in range(2):  # a CSV it wrote is replaced
        proc = in_process(
            "predict", [f"checkpoint={finished_run}", f"source={tmp_path / 'new'}", f"out={csv}"], tmp_path
        )
        assert proc.returncode == 0, proc.stderr
    assert csv.read_text().startswith("path,") and len(csv.read_text().splitlines()) == 13
    assert not list(tmp_path.glob(".*.tmp*"))


def test_evaluate_and_export_out_never_replace_what_they_did_not_write(tmp_path, finished_run):
    run_metrics = (finished_run / "metrics.json").read_bytes()
    proc = in_process("evaluate", [f"checkpoint={finished_run}", f"out={finished_run}"], tmp_path)
    assert proc.returncode == 2 and str(finished_run / "metrics.json") in proc.stderr, proc.stderr
    assert (finished_run / "metrics.json").read_bytes() == run_metrics
    report = tmp_path / "report"
    for _ in range(2):  # a report over a report
        assert in_process("evaluate", [f"checkpoint={finished_run}", f"out={report}"], tmp_path).returncode == 0
    assert {p.name for p in report.iterdir()} == {
        "metrics.json",
        "per_class.csv",
        "confusion_matrix.png",
        "errors.csv",
        "errors.png",
    }

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": 1}')
    proc = in_process("export", [f"checkpoint={finished_run}", f"out={foreign}"], tmp_path)
    assert proc.returncode == 2 and str(foreign / "config.json") in proc.stderr, proc.stderr
    assert (foreign / "config.json").read_text() == '{"mine": 1}' and not (foreign / "model.safetensors").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    proc = in_process("export", [f"checkpoint={finished_run}", f"out={a_file}"], tmp_path)
    assert proc.returncode == 2 and a_file.read_text() == "keep"
    export = tmp_path / "export"
    for _ in range(2):  # an export over an export
        assert in_process("export", [f"checkpoint={finished_run}", f"out={export}"], tmp_path).returncode == 0
    assert {p.name for p in export.iterdir()} == {"model.safetensors", "config.json"}


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_ctrl_c_while_writing_gives_one_line_exit_130_and_no_half_file(tmp_path, finished_run, command):
    _image_folder(tmp_path / "new")
    out = tmp_path / ("preds.csv" if command == "predict" else "out")
    args = [f"checkpoint={finished_run}", f"out={out}"] + (
        [f"source={tmp_path / 'new'}"] if command == "predict" else []
    )
    # SIGINT arrives with the first output written to its temporary file, just before its rename
    code, text = _finish(_entry(command, args, tmp_path, env={"TRAINER_FAILPOINT": "sigint:1"}))
    assert code == 130 and "Traceback" not in text, text[-2000:]
    assert text.strip().splitlines()[-1].startswith("interrupted")
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.rglob(".*.tmp*"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process has just ended
        return ""


def test_ctrl_c_during_startup_is_one_line_too(tmp_path, finished_run):
    _image_folder(tmp_path / "new")
    proc = _entry("predict", [f"checkpoint={finished_run}", f"source={tmp_path / 'new'}"], tmp_path)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + BOUNDED
    while proc.poll() is None and time.monotonic() < deadline and "libtorch" not in _read(maps):
        time.sleep(0.01)  # until torch is being loaded: inside the command's imports
    proc.send_signal(signal.SIGINT)
    code, text = _finish(proc)
    assert code == 130 and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "predictions.csv").exists()


def test_a_checkpoint_with_a_config_that_is_not_a_mapping_is_refused(tmp_path, finished_run):
    from trainer.models.trained import load_trained

    ckpt = finished_run / "checkpoints" / "best.pt"
    state = load_checkpoint(ckpt)
    state["config"] = "- just\n- a list\n"
    save_checkpoint(state, ckpt)
    with pytest.raises(UserError, match="not a mapping"):
        load_trained(str(ckpt))
    assert torch.load(ckpt, weights_only=True)["config"].startswith("- just")


def test_a_resume_on_changed_data_says_what_changed_and_goes_on_only_when_asked(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    _image_folder(data)
    model = [a for a in TINY if a.startswith("model.")]
    args = [*model, "data=imagefolder", f"data.root={data}", "data.image_size=32", "trainer.epochs=2"]
    killed = train([*args, f"hydra.run.dir={run}"], tmp_path, check=False, env={"TRAINER_FAILPOINT": "epoch:1"})
    assert killed.returncode != 0
    recorded = load_checkpoint(run / "checkpoints" / "last.pt")["data"]
    assert recorded["classes"] == ["a", "b"] and recorded["train"]["images"] + recorded["val"]["images"] == 12
    # the same data in another place is the same data
    moved = tmp_path / "moved"
    data.rename(moved)
    data = moved
    for i in range(6, 9):  # three images added between the kill and the resume
        Image.new("RGB", (20, 20), (10, 200, 10 * i)).save(data / "a" / f"{i}.png")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    refused = train([f"resume={run}", f"data.root={data}"], tmp_path, check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "Traceback" not in said
    assert "the data differ from what this run trained on (train images" in said
    assert "resume_on_changed_data=true" in said
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    went_on = train([f"resume={run}", f"data.root={data}", "resume_on_changed_data=true"], tmp_path)
    assert "resume on changed data" in (run / "train.log").read_text()
    assert went_on.returncode == 0


def test_the_fingerprint_sees_a_relabelled_file_and_ignores_a_moved_folder(tmp_path):
    from trainer.data.datasets import load_imagefolder
    from trainer.data.fingerprint import data_changes, fingerprint

    _image_folder(tmp_path / "one")
    first = fingerprint(load_imagefolder(str(tmp_path / "one"), val_split=0.25, seed=0))
    (tmp_path / "one").rename(tmp_path / "two")
    assert data_changes(first, fingerprint(load_imagefolder(str(tmp_path / "two"), val_split=0.25, seed=0))) == []
    (tmp_path / "two" / "a" / "0.png").rename(tmp_path / "two" / "b" / "0a.png")  # same count, one label moved
    changed = data_changes(first, fingerprint(load_imagefolder(str(tmp_path / "two"), val_split=0.25, seed=0)))
    assert changed and all("differ" in c or "images" in c for c in changed)
    assert data_changes(None, first) == []  # a checkpoint from before fingerprints
