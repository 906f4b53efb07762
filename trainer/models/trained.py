"""A trained model rebuilt from one of our checkpoints (or run folders), running no code from it.

The checkpoint's own config rebuilds the architecture (its ``_target_`` entries checked first, with
only the ``allow_targets`` given on this command line trusted), its weights fill it, and its input
spec gives the preprocessing the model was trained with. Used by the commands in ``trainer.use`` and
by a distillation teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config.tasks import task_named
from trainer.errors import UserError


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, with what using it needs."""

    model: Any
    classes: list[str]
    task: str
    input_spec: dict[str, Any]
    config: Any
    checkpoint: Path
    state: dict[str, Any]


def load_trained(value: str, allow: tuple[str, ...] = ()) -> Trained:
    """The trained model of a checkpoint or run folder, on the CPU, in eval mode."""
    from trainer.config.targets import check_targets, instantiate_node
    from trainer.config.untrusted import load_config
    from trainer.runs.checkpoint import checkpoint_of, inference_weights, load_checkpoint

    path = checkpoint_of(value, key="checkpoint", names=("best.pt", "last.pt"))
    state = load_checkpoint(path)
    stored = load_config(state["config"], f"the config stored in {path}")  # the run that made it
    check_targets(stored, extra=allow, where=f"config stored in {path}")
    stored.allow_targets = list(allow)  # a list stored in the run is not trusted: only the one given now
    task = str(state.get("task") or stored.data.get("task") or "multiclass")
    classes = [str(c) for c in state["classes"]]
    stored.model.pretrained = False  # the checkpoint brings every weight: nothing is downloaded or read
    stored.model.weights = None
    built = instantiate_node(stored.model)(num_classes=len(classes), task=task)
    try:
        built.model.load_state_dict(inference_weights(state))
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model its config describes ({str(e)[:200]}).") from None
    built.model.eval()
    spec = dict(state["input_spec"])
    return Trained(built.model, classes, task, spec, stored, path, state)


def preprocess(trained: Trained) -> Any:
    """The evaluation transform the model was trained with (resize, center crop, normalize): what
    predict, the int8 calibration and the exports' checks feed it."""
    import torch
    from torchvision.transforms import v2

    from trainer.data.transforms import build_transforms

    if task_named(trained.task).per_pixel:
        spec = trained.input_spec
        return v2.Compose(
            [
                v2.Resize((spec["size"], spec["size"]), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(spec["mean"], spec["std"]),
            ]
        )
    return build_transforms("none", trained.input_spec, train=False, task=trained.task)


def upright(trained: Trained) -> bool:
    """Whether images are turned as their EXIF orientation says before this model sees them (the
    run's data.exif; checkpoints from before the key: yes)."""
    return trained.input_spec.get("exif", "apply") != "ignore"


def channels_last(trained: Trained) -> bool:
    """Whether the run trained and scored in channels_last (its ``trainer.channels_last`` as the run
    resolved it; checkpoints from before the key: no). Scoring keeps the layout: fp32 either way, the
    logits agree to float rounding and a conv net runs faster in it on a CPU (docs/BENCHMARKS.md)."""
    trainer = trained.config.get("trainer") or {}
    return trainer.get("channels_last") is True


NOT_FLIPPED = (
    "tta=flip: this model was trained without mirrored images (data.augment={augment}), so a mirror image is "
    "new to it: on the digits, trained so, tta=flip cost 3.6 points of accuracy (docs/use-the-model.md)"
)
FLIPPING = ("flip_crop", "randaugment", "trivialaugment", "autoaugment")  # data.augment with a random mirror


def trained_with_flips(trained: Trained) -> bool:
    """Whether the run's training augmentation mirrored images (``tta=flip`` is then no surprise to it)."""
    data = trained.config.get("data") or {}
    return str(data.get("augment", "flip_crop")) in FLIPPING
