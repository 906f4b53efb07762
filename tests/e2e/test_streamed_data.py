"""Streamed data end to end: shards read through a pipe train, are killed with SIGKILL part-way into an
epoch and resume to the unbroken run's very weights; two processes under torchrun each read their own
shards, every sample once an epoch, and train in step; a Hugging Face IterableDataset trains and its
checkpoint is evaluated; what a stream cannot do is refused in one paragraph."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runner import final_tensors, in_process, kill_after_first_checkpoint, train
from support import HANG_GUARD, TINY, metrics, offline_env

MODEL = [t for t in TINY if not t.startswith("data=")]
STREAM = [*MODEL, "data=webdataset", "data.image_size=32", "data.batch_size=8"]


def _image(i: int) -> bytes:
    import io

    a = np.zeros((20, 20, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = i % 256, i // 256, 60 + 120 * (i % 2)  # the class shows in blue
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def _shards(folder: Path, train: int = 96, per_shard: int = 12) -> list[str]:
    """Train and val shards with classes.txt; the overrides that stream them through ``pipe:cat``."""
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", range(train)), ("val", range(500, 516))):
        with webdataset.ShardWriter(str(folder / f"{name}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for i in ids:
                sink.write({"__key__": f"s{i:05d}", "png": _image(i), "cls": str(i % 2).encode()})
    (folder / "classes.txt").write_text("dark\nbright\n")
    last = -(-train // per_shard) - 1
    return [
        f"data.train='pipe:cat {folder}/train-{{000000..{last:06d}}}.tar'",
        f"data.val='pipe:cat {folder}/val-000000.tar'",
        f"data.classes_file={folder}/classes.txt",
    ]


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_to_the_unbroken_result(tmp_path):
    args = [
        *STREAM,
        *_shards(tmp_path / "shards"),
        "trainer.epochs=2",
        "checkpoint.every_n_steps=3",
        "data.num_workers=2",
    ]
    train([*args, f"hydra.run.dir={tmp_path / 'unbroken'}"], tmp_path)
    work = tmp_path / "killed"
    work.mkdir()
    run_dir = kill_after_first_checkpoint(args, work)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["batch_in_epoch"] > 0
    train([*args, "resume=auto"], work)
    a, b = final_tensors(tmp_path / "unbroken"), final_tensors(run_dir)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    history = [{**h, "seconds": 0} for h in metrics(run_dir)["history"]]
    assert history == [{**h, "seconds": 0} for h in metrics(tmp_path / "unbroken")["history"]]
    # the checkpoint names its streams: evaluate reads the val stream again and scores the run's best
    ev = in_process("evaluate", [f"checkpoint={run_dir}", f"out={tmp_path / 'ev'}"], tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["val/acc"] == pytest.approx(
        metrics(run_dir)["best"]
    )


def _count(tmp_path: Path, how: str, train_pattern: str, val: str) -> list[dict]:
    out = tmp_path / how
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(Path(__file__).parent / "count_samples.py"),
            train_pattern,
            val,
            how,
            str(out),
        ],
        cwd=tmp_path,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_under_torchrun_see_each_sample_once_an_epoch_and_train_in_step(tmp_path):
    overrides = _shards(tmp_path / "shards")  # 8 shards of 12: 2 ranks x 2 workers x 2 shards
    for how, pattern in (
        ("indexed", f"{tmp_path}/shards/train-*.tar"),
        ("stream", f"pipe:cat {tmp_path}/shards/train-{{000000..000007}}.tar"),
    ):
        ranks = _count(tmp_path, how, pattern, f"{tmp_path}/shards/val-000000.tar")
        assert ranks[0]["batches"] == ranks[1]["batches"] == 6
        for epoch in (0, 1):
            seen = ranks[0]["epochs"][epoch] + ranks[1]["epochs"][epoch]
            assert Counter(seen) == Counter(range(96)), f"{how}, epoch {epoch}: each sample exactly once"
        assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    # and `train` itself on the stream, two processes through torchrun: they finish in step
    run = tmp_path / "ddp"
    out = train(
        [*STREAM, *overrides, "trainer.epochs=2", "trainer.devices=2", "trainer.device=cpu", f"hydra.run.dir={run}"],
        tmp_path,
    )
    said = out.stderr + out.stdout
    assert "starting 2 processes" in said and "distributed: 2 processes" in said
    m = metrics(run)  # 6 steps an epoch on each rank: none waits for the other at an epoch's end
    assert m["finished"] and m["epochs_done"] == 2 and len(m["history"]) == 2


@pytest.mark.slow
def test_a_hugging_face_iterable_dataset_trains_and_its_checkpoint_is_evaluated(tmp_path):
    import io

    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "bright"])})

    def part(ids):
        images = [Image.open(io.BytesIO(_image(i))) for i in ids]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in ids]}, features=features)

    folder = tmp_path / "hf"
    folder.mkdir()
    for k in range(3):
        part(range(k * 16, k * 16 + 16)).to_parquet(str(folder / f"train-{k:05d}-of-00003.parquet"))
    part(range(500, 512)).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    run = tmp_path / "run"
    out = train(
        [
            *MODEL,
            "data=hf",
            "data.path=hf",
            "data.streaming=true",
            "data.image_size=32",
            "data.batch_size=8",
            "trainer.epochs=2",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert "48 samples an epoch, estimated as 16 in the first shard x 3 shards" in out.stderr + out.stdout
    m = metrics(run)
    assert m["classes"] == ["dark", "bright"] and m["epochs_done"] == 2
    ev = in_process("evaluate", [f"checkpoint={run}", f"out={tmp_path / 'ev'}"], tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["val/acc"] == pytest.approx(m["best"])


@pytest.mark.parametrize(
    "setting, words",
    [
        ("data.folds=5", "data.folds=5: K-fold splits the training images by index"),
        ("data.verify=true", "data.verify=true: it reads every image by index"),
        pytest.param(  # these two are refused once the model is built: the full suite's
            "data.sampler=balanced",
            "data.sampler=balanced: class balancing needs every image's label",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "finetune.cache_features=true",
            "finetune.cache_features=true: caching features reads",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_what_a_stream_cannot_do_is_refused_in_one_paragraph(tmp_path, setting, words):
    out = train([*STREAM, *_shards(tmp_path / "shards", train=24), setting], tmp_path, check=False)
    said = out.stdout + out.stderr
    assert out.returncode == 2 and words in said and "streamed (pipe:cat" in said, said[-2000:]
    assert "Traceback" not in said
