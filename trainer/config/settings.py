"""Every run-level setting, declared once: its type, its range, whether null is allowed, and the words
that say what is valid. Its default and its one-line meaning live beside it in conf/ (the YAML Hydra
composes); ``validate_config`` (schema.py) checks a composed config against these declarations, and
docs/config.md is generated from both (``python -m trainer.config.reference``). A test fails when a key
in conf/ has no declaration here or docs/config.md is stale.

Keys of a group's own options (``optimizer.momentum``, ``scheduler.T_max``, a loss's ``gamma``) are the
arguments of what the option builds, documented in its file; the ones every option shares are here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from omegaconf import OmegaConf

from trainer.config.tasks import TASKS as ALL_TASKS

TASKS = tuple(ALL_TASKS)

Check = Callable[[Any], bool]


class Setting(NamedTuple):
    kind: type  # int, float, str, bool, or object (the check decides)
    check: Check
    valid: str  # what a valid value is, in words (the error message and docs/config.md say it)
    nullable: bool = False


def _int(lo: int) -> tuple[type, Check, str]:
    return int, lambda v: v >= lo, f"an integer >= {lo}"


def _pos_float(strict: bool = True) -> tuple[type, Check, str]:
    return float, (lambda v: v > 0) if strict else (lambda v: v >= 0), "a number > 0" if strict else "a number >= 0"


def _choice(*values: str) -> tuple[type, Check, str]:
    return str, lambda v: v in values, "one of " + ", ".join(values)


_BOOL: tuple[type, Check, str] = (bool, lambda v: True, "true or false")


def _text(valid: str) -> tuple[type, Check, str]:
    return str, lambda v: bool(v), valid


_FRACTION: tuple[type, Check, str] = (float, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 0.01")


def _duration_ok(value: Any) -> bool:
    from trainer.config.values import parse_duration

    try:
        return parse_duration(value) is not None
    except ValueError:
        return False


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or OmegaConf.is_list(value)


def type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


SETTINGS: dict[str, Setting] = {
    "trainer.epochs": Setting(*_int(1)),
    "trainer.accumulate": Setting(*_int(1)),
    "trainer.effective_batch": Setting(*_int(1), nullable=True),
    "trainer.log_every": Setting(*_int(1)),
    "trainer.clip_grad_norm": Setting(*_pos_float(), nullable=True),
    "trainer.precision": Setting(*_choice("auto", "fp32", "bf16", "fp16")),
    "trainer.eval_precision": Setting(*_choice("fp32", "same")),
    "trainer.nonfinite": Setting(*_choice("stop", "skip")),
    "trainer.devices": Setting(*_int(1)),
    "trainer.sync_bn": Setting(*_BOOL),
    "trainer.ema_decay": Setting(
        *(float, lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.9998 (or null: off)"), nullable=True
    ),
    "trainer.early_stop_patience": Setting(*_int(1), nullable=True),
    "trainer.channels_last": Setting(*(object, lambda v: v == "auto" or isinstance(v, bool), "auto, true or false")),
    "trainer.compile": Setting(
        *(
            object,
            lambda v: isinstance(v, (bool, str)),
            "true, false or a torch.compile backend (e.g. inductor, aot_eager)",
        )
    ),
    "trainer.time_budget": Setting(
        *(object, _duration_ok, "a duration such as 90s, 10m or 1h30m (or null: off)"), nullable=True
    ),
    "trainer.device": Setting(
        *(str, lambda v: v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"), "auto, cpu, cuda, cuda:N or mps")
    ),
    "finetune.head_epochs": Setting(
        *(
            object,
            lambda v: v == "auto" or (type_ok(v, int) and v >= 0),
            "auto (none in runs under 20 epochs, else a tenth of them) or an integer >= 0",
        )
    ),
    "finetune.backbone_lr_mult": Setting(*_pos_float(strict=False)),
    "finetune.layer_decay": Setting(*(float, lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.75"), nullable=True),
    "finetune.bn": Setting(*_choice("train", "frozen_stats", "frozen")),
    "finetune.cache_features": Setting(*(object, lambda v: v == "auto" or isinstance(v, bool), "auto, true or false")),
    "finetune.stages": Setting(
        *(object, lambda v: is_list(v) and len(v) > 0, "null or a list of stages"), nullable=True
    ),
    "distill.alpha": Setting(*_FRACTION),
    "distill.temperature": Setting(*_pos_float()),
    "distill.teacher": Setting(
        *_text("a run folder or .pt of a teacher trained on these classes, or a timm model name"), nullable=True
    ),
    "schedule.interval": Setting(*_choice("step", "epoch")),
    "schedule.warmup_epochs": Setting(*_pos_float(strict=False)),
    "checkpoint.monitor": Setting(
        *(
            str,
            lambda v: v == "auto" or v.startswith("val/"),
            "auto or a val/ metric (val/acc, val/loss, val/f1_macro, val/mAP, val/mIoU, ...)",
        )
    ),
    "checkpoint.mode": Setting(*_choice("auto", "max", "min")),
    "checkpoint.every_n_steps": Setting(*_int(0)),
    "checkpoint.keep_last": Setting(*_int(1)),
    "seed": Setting(*_int(0)),
    "lr_find": Setting(*_BOOL),
    "plan": Setting(*_BOOL),
    "resume": Setting(*_text("auto, or a checkpoint or run folder"), nullable=True),
    "race.storage": Setting(*_text("an Optuna storage URL, set by hydra/sweeper=race"), nullable=True),
    "race.trial": Setting(*_int(0), nullable=True),
    "race.until": Setting(*_int(1), nullable=True),
    "race.deadline": Setting(*_pos_float(), nullable=True),
    "race.pace": Setting(*_BOOL),
    "allow_targets": Setting(*(object, is_list, "a list of package prefixes, e.g. [my_pkg.]")),
    "model.source": Setting(*_choice("timm", "torchvision")),
    "model.pretrained": Setting(*_BOOL),
    "model.drop_rate": Setting(*(float, lambda v: 0 <= v < 1, "a number in [0, 1)")),
    "model.decoder": Setting(*_choice("unet", "fpn"), nullable=True),
    "model.head.hidden": Setting(*_int(1), nullable=True),
    "model.head.dropout": Setting(*(float, lambda v: 0 <= v < 1, "a number in [0, 1), e.g. 0.2")),
    "model.name": Setting(*_text("a timm or torchvision model name, e.g. resnet34"), nullable=True),
    "model.weights": Setting(*_text("a .pth, .pt or .safetensors file, or package:<name>"), nullable=True),
    "model.freeze": Setting(
        *(object, lambda v: True, "none, backbone, a list of parts, {until: part} or {regex: ...}")
    ),
    "data.batch_size": Setting(
        *(
            object,
            lambda v: v == "auto" or (type_ok(v, int) and v >= 1),
            "auto (measured: the largest that fits on CUDA, the best pace on a CPU) or an integer >= 1",
        )
    ),
    "data.folds": Setting(int, lambda v: v >= 2, "an integer >= 2 (or null: off)", nullable=True),
    "data.fold": Setting(*_int(0)),
    "data.val_split": Setting(*(float, lambda v: 0 < v < 1, "a number between 0 and 1, e.g. 0.2")),
    "data.image_size": Setting(
        *(
            object,
            lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 8),
            "auto, null (the model's size) or an integer >= 8",
        ),
        nullable=True,
    ),
    "data.augment": Setting(*_choice("none", "affine", "flip_crop", "randaugment", "trivialaugment", "autoaugment")),
    "data.random_erasing": Setting(*_FRACTION),
    "data.mixup": Setting(*_pos_float(strict=False)),
    "data.cutmix": Setting(*_pos_float(strict=False)),
    "data.sampler": Setting(*_choice("shuffle", "balanced")),
    "data.decode": Setting(*_choice("workers", "device")),
    "data.exif": Setting(*_choice("apply", "ignore")),
    "data.duplicates": Setting(*_choice("drop_from_val", "warn", "error")),
    "data.max_bad_fraction": Setting(*_FRACTION),
    "data.verify": Setting(*_BOOL),
    "data.task": Setting(*_choice(*TASKS)),
    "data.ignore_index": Setting(*_int(0), nullable=True),
    "data.num_workers": Setting(
        *(object, lambda v: v == "auto" or (type_ok(v, int) and 0 <= v <= 256), "auto or an integer from 0 to 256"),
        nullable=True,
    ),
    "data.root": Setting(*_text("a folder"), nullable=True),
    "data.crop_pct": Setting(*(float, lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.875"), nullable=True),
    "optimizer.lr": Setting(
        *(
            object,
            lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
            "a number > 0, or auto (the lr range test picks it)",
        )
    ),
    "optimizer.weight_decay": Setting(*_pos_float(strict=False), nullable=True),
    "optimizer.betas": Setting(
        *(
            object,
            lambda v: is_list(v) and len(v) == 2 and all(type_ok(b, float) and 0 <= b < 1 for b in v),
            "two numbers in [0, 1), e.g. [0.9,0.999]",
        )
    ),
    "resume_on_changed_data": Setting(*_BOOL),
}
