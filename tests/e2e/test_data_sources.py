"""Data beyond a folder: a folder written as WebDataset shards (write-shards) trains to the very weights
the folder does; a run on shards resumes mid-epoch exactly; a Hugging Face data set trains, and
evaluate and predict work on what was trained."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from runner import final_tensors, in_process, interrupt_and_resume, train
from support import TINY

MODEL = [t for t in TINY if not t.startswith("data=")]
QUICK = [*MODEL, "trainer.epochs=1", "data.num_workers=0", "data.image_size=32", "data.batch_size=8"]


def _image(c: int, i: int) -> Image.Image:
    a = np.full((28, 28, 3), 20 + i, np.uint8)  # each image its own
    a[4:20, 4:20, c] = 220
    return Image.fromarray(a)


def _folder(root):
    """A folder as people have it: two classes, PNG and JPEG, a Finder leftover."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(20):
            _image(c, i).save(root / name / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


@pytest.mark.slow
def test_a_folder_written_as_shards_trains_to_the_same_weights(tmp_path):
    folder = _folder(tmp_path / "pets")
    out = in_process(
        "write_shards",
        ["data=imagefolder", f"data.root={folder}", f"out={tmp_path / 'shards'}", "maxcount=6"],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote 6 train and 2 val shard(s)" in out.stdout  # 32 train / 8 val images, 6 a shard
    assert (tmp_path / "shards" / "classes.txt").read_text() == "cat\ndog\n"
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())  # a streamed run's exact epoch
    assert sum(n for name, n in sizes.items() if name.startswith("train-")) == 32 and len(sizes) == 8
    train([*QUICK, "data=imagefolder", f"data.root={folder}", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    shards = [f"data.train={tmp_path}/shards/train-*.tar", f"data.val={tmp_path}/shards/val-*.tar"]
    train([*QUICK, "data=webdataset", *shards, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    a, b = final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert ma["best"] == mb["best"] and mb["classes"] == ["cat", "dog"]
    # the checkpoint remembers its shards: evaluate reads them again; predict labels a folder
    ev = in_process("evaluate", [f"checkpoint={tmp_path / 'b'}", f"out={tmp_path / 'ev'}"], tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["val/acc"] == pytest.approx(mb["best"])
    pr = in_process(
        "predict",
        [f"checkpoint={tmp_path / 'b'}", f"source={folder / 'dog'}", f"out={tmp_path / 'pred.csv'}"],
        tmp_path,
    )
    assert pr.returncode == 0, pr.stderr
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 21


@pytest.mark.slow
def test_a_run_on_shards_resumes_mid_epoch_exactly(compose_cfg, tmp_path):
    import webdataset

    with webdataset.ShardWriter(str(tmp_path / "train-%06d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(48):
            buffer = io.BytesIO()
            _image(i % 2, i).save(buffer, format="PNG")
            sink.write({"__key__": f"{i:05d}", "png": buffer.getvalue(), "cls": str(i % 2).encode()})
    cfg = compose_cfg(*QUICK, "data=webdataset", f"data.train={tmp_path}/train-*.tar", "trainer.epochs=2")
    from trainer.loop.build import build_run

    build_run(cfg, run_dir=tmp_path / "a").fit()
    expected = final_tensors(tmp_path / "a")
    resumed = interrupt_and_resume(cfg, tmp_path / "b", at_call=3)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_a_hugging_face_data_set_trains_and_is_evaluated_from_its_checkpoint(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {"image": [_image(i % 2, i + offset) for i in range(n)], "label": [i % 2 for i in range(n)]},
            features=features,
        )

    datasets.DatasetDict({"train": split(32, 0), "validation": split(8, 100)}).save_to_disk(str(tmp_path / "hf"))
    train([*QUICK, "data=hf", "data.path=hf", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)  # relative: made absolute
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["classes"] == ["cat", "dog"] and m["epochs_done"] == 1
    ev = in_process("evaluate", [f"checkpoint={tmp_path / 'run'}", f"out={tmp_path / 'ev'}"], tmp_path / "run")
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["val/acc"] == pytest.approx(m["best"])
