"""predict explain=gradcam: on generated images whose class is decided by one region (the colour of
one square on noise), a model trained here looks at that region: the Grad-CAM peak of every image lies
in its square. Also the overlays and the CSV column, the layer override, and the refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from runner import in_process, train

from trainer.errors import UserError

SIZE, CELL = 128, 32
TINY_FROM_SCRATCH = ["model.name=test_resnet", "model.pretrained=false", "model.weights=null"]


def squares(root, per_class: dict[str, int], seed: int) -> dict[str, tuple[int, int]]:
    """Noise images with one red or blue square on a 32 px grid cell; the class is the square's colour.
    Returns each image's cell (row, column) by file stem."""
    rng = np.random.default_rng(seed)
    cells = {}
    for split, n in per_class.items():
        for label, colour in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(90, 160, (SIZE, SIZE, 3), dtype=np.uint8)
                r, c = (int(v) for v in rng.integers(0, SIZE // CELL, 2))
                img[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = colour
                Image.fromarray(img).save(folder / f"{split}_{label}{i}.png")
                cells[f"{split}_{label}{i}"] = (r, c)
    return cells


@pytest.fixture(scope="module")
def squares_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    cells = squares(root / "data", {"train": 48, "val": 12}, seed=0)
    run = root / "run"
    args = [*TINY_FROM_SCRATCH, "data=imagefolder", f"data.root={root / 'data'}", f"data.image_size={SIZE}"]
    train([*args, "trainer.epochs=3", "data.batch_size=16", f"hydra.run.dir={run}"], root)
    return root, run, cells


def test_the_heatmap_peak_lies_in_the_region_that_decides_the_class(squares_run):
    from trainer.data.images import decode_rgb
    from trainer.models.trained import load_trained
    from trainer.use.explain import Explainer
    from trainer.use.predict import forward, preprocess

    root, run, cells = squares_run
    trained = load_trained(str(run))
    paths = sorted((root / "data" / "val").rglob("*.png"))
    transform = preprocess(trained)
    x = torch.stack([transform(decode_rgb(str(p))) for p in paths])
    probs = forward(trained, x, torch.device("cpu"), "none")
    explainer = Explainer(trained.model, trained.task, SIZE)
    assert explainer.layer_name == "layer4"  # timm's feature_info: the last stage
    inside = 0
    for path, heat in zip(paths, explainer.heatmaps(x, probs)):
        assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() <= 1
        y, x_ = np.unravel_index(int(heat.argmax()), heat.shape)
        r, c = cells[path.stem]
        inside += r * CELL <= y < (r + 1) * CELL and c * CELL <= x_ < (c + 1) * CELL
    assert inside == len(paths), f"{inside} of {len(paths)} peaks inside the deciding square"


def test_predict_writes_an_overlay_per_image_and_names_it(squares_run, tmp_path):
    root, run, _ = squares_run
    out = tmp_path / "p.csv"
    source = root / "data" / "val" / "red"
    proc = in_process("predict", [f"checkpoint={run}", f"source={source}", f"out={out}", "explain=gradcam"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and all(r["label_1"] == "red" for r in rows)
    for row in rows:
        image = Image.open(row["gradcam"])
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    # another layer by name; a wrong name is a one-paragraph error naming the parts
    proc = in_process(
        "predict",
        [f"checkpoint={run}", f"source={source}", f"out={out}", "explain=gradcam", "explain.layer=layer3"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = in_process(
        "predict",
        [f"checkpoint={run}", f"source={source}", f"out={out}", "explain=gradcam", "explain.layer=nope"],
        tmp_path,
    )
    assert proc.returncode == 2 and "explain.layer='nope'" in proc.stderr and "layer4" in proc.stderr


def test_a_torchvision_model_gets_its_last_feature_map_and_segmentation_is_refused():
    import torchvision

    from trainer.use.explain import Explainer, target_layer

    model = torchvision.models.resnet18(num_classes=3).eval()
    assert target_layer(model, 64)[0] == "layer4"  # avgpool is 1x1, fc is flat
    with pytest.raises(UserError, match="segmentation"):
        Explainer(model, "segmentation", 64)


def test_a_vision_transformer_is_explained_on_its_patch_grid():
    import timm

    from trainer.use.explain import Explainer

    model = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    size = model.default_cfg["input_size"][-1]
    explainer = Explainer(model, "multiclass", size)
    x = torch.randn(2, 3, size, size)
    heat = explainer.heatmaps(x, torch.softmax(model(x), 1).detach())
    assert heat.shape == (2, size, size)
