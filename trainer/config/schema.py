"""The config's one schema and every refusal: types and ranges, task/loss/metric fit, DDP limits.

Only Hydra and OmegaConf are imported here, so a typo answers at once, without loading torch.
``validate_config`` runs on the composed config; ``check_run`` once the data's task is known.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config.overrides import first_value, is_interval, key_of
from trainer.errors import UserError


def _conf_dir() -> str:
    """The configs: inside the installed package (a wheel), else the repository's top-level conf/."""
    package = Path(__file__).resolve().parent.parent  # trainer/
    packaged = package / "conf"
    return str(packaged if (packaged / "train.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()

TASKS = ("multiclass", "binary", "multilabel", "segmentation")
TASK_METRICS = {
    "multiclass": ("val/loss", "val/acc", "val/top5", "val/f1_macro"),
    "binary": ("val/loss", "val/acc", "val/f1", "val/auroc"),
    "multilabel": ("val/loss", "val/mAP", "val/f1_macro", "val/acc"),
    "segmentation": ("val/loss", "val/mIoU", "val/dice", "val/acc"),
}
DEFAULT_MONITOR = {"multiclass": "val/acc", "binary": "val/acc", "multilabel": "val/mAP", "segmentation": "val/mIoU"}

Check = Callable[[Any], bool]


def _int(lo: int) -> tuple[type, Check, str]:
    return int, lambda v: v >= lo, f"an integer >= {lo}"


def _pos_float(strict: bool = True) -> tuple[type, Check, str]:
    return float, (lambda v: v > 0) if strict else (lambda v: v >= 0), "a number > 0" if strict else "a number >= 0"


def _choice(*values: str) -> tuple[type, Check, str]:
    return str, lambda v: v in values, "one of " + ", ".join(values)


_BOOL: tuple[type, Check, str] = (bool, lambda v: True, "true or false")
_FRACTION: tuple[type, Check, str] = (float, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 0.01")


def _duration_ok(value: Any) -> bool:
    from trainer.config.values import parse_duration

    try:
        return parse_duration(value) is not None
    except ValueError:
        return False


# key -> (type, check, what is valid); a null value is allowed where listed in NULLABLE
RULES: dict[str, tuple[type, Check, str]] = {
    "trainer.epochs": _int(1),
    "plan": _BOOL,
    "trainer.accumulate": _int(1),
    "trainer.log_every": _int(1),
    "trainer.clip_grad_norm": _pos_float(),
    "trainer.precision": _choice("auto", "fp32", "bf16", "fp16"),
    "trainer.nonfinite": _choice("stop", "skip"),
    "trainer.devices": _int(1),
    "trainer.sync_bn": _BOOL,
    "trainer.ema_decay": (float, lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.9998 (or null: off)"),
    "trainer.early_stop_patience": _int(1),
    "trainer.channels_last": (object, lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "trainer.compile": (
        object,
        lambda v: isinstance(v, (bool, str)),
        "true, false or a torch.compile backend (e.g. inductor, aot_eager)",
    ),
    "optimizer.lr": (
        object,
        lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
        "a number > 0, or auto (the lr range test picks it)",
    ),
    "lr_find": _BOOL,
    "resume_on_changed_data": _BOOL,
    "distill.alpha": _FRACTION,
    "distill.temperature": _pos_float(),
    "optimizer.weight_decay": _pos_float(strict=False),
    "finetune.head_epochs": (
        object,
        lambda v: v == "auto" or (_type_ok(v, int) and v >= 0),
        "auto (none in runs under 10 epochs, else a tenth of them) or an integer >= 0",
    ),
    "trainer.time_budget": (object, _duration_ok, "a duration such as 90s, 10m or 1h30m (or null: off)"),
    "finetune.backbone_lr_mult": _pos_float(strict=False),
    "finetune.layer_decay": (float, lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.75"),
    "finetune.bn": _choice("train", "frozen_stats", "frozen"),
    "finetune.cache_features": (object, lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "schedule.interval": _choice("step", "epoch"),
    "schedule.warmup_epochs": _pos_float(strict=False),
    "data.batch_size": _int(1),
    "data.val_split": (float, lambda v: 0 < v < 1, "a number between 0 and 1, e.g. 0.2"),
    "data.image_size": (
        object,
        lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 8),
        "auto, null (the model's size) or an integer >= 8",
    ),
    "data.augment": _choice("none", "affine", "flip_crop", "randaugment", "trivialaugment", "autoaugment"),
    "data.random_erasing": _FRACTION,
    "data.mixup": _pos_float(strict=False),
    "data.cutmix": _pos_float(strict=False),
    "data.sampler": _choice("shuffle", "balanced"),
    "data.decode": _choice("workers", "device"),
    "data.max_bad_fraction": _FRACTION,
    "data.verify": _BOOL,
    "data.task": _choice(*TASKS),
    "data.ignore_index": _int(0),
    "checkpoint.monitor": (
        str,
        lambda v: v == "auto" or v.startswith("val/"),
        "auto or a val/ metric (val/acc, val/loss, val/f1_macro, val/mAP, val/mIoU, ...)",
    ),
    "checkpoint.mode": _choice("auto", "max", "min"),
    "checkpoint.every_n_steps": _int(0),
    "checkpoint.keep_last": _int(1),
    "model.source": _choice("timm", "torchvision"),
    "model.pretrained": _BOOL,
    "model.drop_rate": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.decoder": _choice("unet", "fpn"),
    "model.head.hidden": _int(1),
    "model.head.dropout": (float, lambda v: 0 <= v < 1, "a number in [0, 1), e.g. 0.2"),
    "optimizer.betas": (
        object,
        lambda v: _is_list(v) and len(v) == 2 and all(_type_ok(b, float) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1), e.g. [0.9,0.999]",
    ),
    "finetune.stages": (object, lambda v: _is_list(v) and len(v) > 0, "null or a list of stages"),
    "seed": _int(0),
}
NULLABLE = {
    "trainer.time_budget",
    "trainer.ema_decay",
    "trainer.early_stop_patience",
    "model.head.hidden",
    "finetune.stages",
    "trainer.clip_grad_norm",
    "finetune.layer_decay",
    "data.image_size",
    "optimizer.weight_decay",
    "data.ignore_index",
    "model.decoder",
}


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or OmegaConf.is_list(value)


def _type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate_config(cfg: DictConfig) -> None:
    """Raise UserError for the first value that is of the wrong type or out of range."""
    for key, (kind, ok, valid) in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False)
        if value == "<absent>" or (value is None and key in NULLABLE):
            continue
        if value is None or not _type_ok(value, kind) or not ok(value):
            raise UserError(f"{key}={value!r} is not valid: use {valid}{_example(key)}.")
    workers = OmegaConf.select(cfg, "data.num_workers", default="auto")
    if workers not in ("auto", None) and not (_type_ok(workers, int) and 0 <= workers <= 256):
        raise UserError(f"data.num_workers={workers!r} is not valid: use auto or an integer from 0 to 256.")
    device = str(OmegaConf.select(cfg, "trainer.device", default="auto"))
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UserError(f"trainer.device={device!r} is not valid: use auto, cpu, cuda, cuda:N or mps.")


def _example(key: str) -> str:
    """' (e.g. key=<default>)', from the default config, when it can be composed here."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
        return ""
    default = OmegaConf.select(compose_config([]), key, default=None)
    return f" (e.g. {key}={default})" if default is not None else ""


def metric_names(task: str, num_classes: int) -> list[str]:
    names = list(TASK_METRICS[task])
    if task == "multiclass" and num_classes <= 5:
        names.remove("val/top5")
    return names


def resolve_monitor(cfg: DictConfig, task: str) -> tuple[str, str]:
    """checkpoint.monitor / mode; ``auto`` picks the task's main metric (val/acc, val/mAP, val/mIoU)."""
    monitor = str(cfg.checkpoint.get("monitor", "auto"))
    monitor = DEFAULT_MONITOR[task] if monitor == "auto" else monitor
    mode = str(cfg.checkpoint.get("mode", "auto"))
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    return monitor, mode


def check_run(cfg: DictConfig, task: str, num_classes: int, device_type: str, distributed: bool) -> None:
    """Refuse, before the model is built, settings that cannot serve this data, device or process count."""
    if cfg.data.get("task") not in (None, task):
        raise UserError(
            f"data.task={cfg.data.task}, but data={cfg.data.name} gives {task} data: leave data.task "
            f"as the data option sets it, or pick a data option for {cfg.data.task}."
        )
    _check_recipes(cfg, task)
    if task == "segmentation" and cfg.finetune.get("cache_features") is True:
        raise UserError(
            "finetune.cache_features=true is for classifiers (a linear probe); a segmentation decoder "
            "trains on feature maps of augmented images: set finetune.cache_features=false."
        )
    monitor, _ = resolve_monitor(cfg, task)
    names = metric_names(task, num_classes)
    if monitor not in names:
        extra = " (val/top5 needs more than 5 classes)" if monitor == "val/top5" else ""
        raise UserError(
            f"checkpoint.monitor={monitor} is not a metric of a {task} task{extra}: use one of "
            f"{', '.join(names)} (or auto)."
        )
    lbfgs = str(cfg.optimizer.get("_target_", "")).endswith("LBFGS")
    skip = str(cfg.trainer.get("nonfinite")) == "skip"
    if lbfgs:
        clashes = {
            "trainer.accumulate>1": int(cfg.trainer.accumulate) > 1,
            "trainer.precision=fp16": str(cfg.trainer.precision) == "fp16",
            "trainer.clip_grad_norm": cfg.trainer.get("clip_grad_norm") is not None,
            "trainer.nonfinite=skip": skip,
        }
        bad = [k for k, on in clashes.items() if on]
        if bad:
            raise UserError(
                f"optimizer=lbfgs re-evaluates the loss inside its own step, so it does not combine "
                f"with {', '.join(bad)}: drop {'it' if len(bad) == 1 else 'them'}, or use another optimizer."
            )
    if distributed:
        _check_distributed(cfg, device_type, lbfgs, skip)


def _check_recipes(cfg: DictConfig, task: str) -> None:
    """Augmentation that only classification data can take, and mixing that needs soft targets."""
    d = cfg.data
    if task == "segmentation":
        bad = (
            [f"data.augment={d.augment}"] if str(d.augment) in ("randaugment", "trivialaugment", "autoaugment") else []
        )
        bad += [f"data.{k}={d.get(k)}" for k in ("random_erasing", "mixup", "cutmix") if d.get(k)]
        if bad:
            raise UserError(
                f"{', '.join(bad)}: for classification only (they would not move the masks with the image). "
                "Segmentation takes data.augment=none, affine or flip_crop."
            )
    mixing = [f"data.{k}={d.get(k)}" for k in ("mixup", "cutmix") if d.get(k)]
    if mixing and task != "multiclass":
        raise UserError(f"{', '.join(mixing)} mixes single-label classes: for multiclass tasks only (this is {task}).")
    if cfg.get("distill", {}).get("teacher") and cfg.finetune.get("cache_features") is True:
        raise UserError(
            "distill.teacher needs the images of each batch, finetune.cache_features=true trains on stored "
            "features: drop one of them."
        )
    if mixing and cfg.finetune.get("cache_features") is True:
        raise UserError(
            f"{', '.join(mixing)} mixes images, finetune.cache_features=true trains on stored features of "
            "unmixed ones: drop one of them."
        )


def _check_distributed(cfg: DictConfig, device_type: str, lbfgs: bool, skip: bool) -> None:
    """Settings that cannot work in lock-step over processes, refused with the alternative."""
    clashes = {
        "trainer.sync_bn=true on a CPU (SyncBatchNorm runs on GPUs only)": bool(cfg.trainer.get("sync_bn"))
        and device_type != "cuda",
        "trainer.nonfinite=skip (a rank that skips a batch would leave the others waiting)": skip,
        "optimizer=lbfgs (its line search runs a different number of steps on each rank)": lbfgs,
        "finetune.cache_features=true (a single-process linear probe)": cfg.finetune.get("cache_features") is True,
    }
    bad = [k for k, on in clashes.items() if on]
    if bad:
        raise UserError(
            "distributed training does not combine with " + "; ".join(bad) + ". Drop them, or train in one process."
        )


def compose_config(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"):
        return compose("train", overrides=overrides)


def explain_overrides(overrides: list[str], multirun: bool = False) -> DictConfig:
    """Compose with the user's overrides and return the config; turn Hydra's composition errors into
    one clear paragraph. Under -m, each sweep is checked with its first value, for keys and options
    only (a bad value fails its own job, and the sweep goes on)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if multirun:
        if not any(o.lstrip("+").startswith("hydra/sweeper=") for o in overrides):
            searched = [o for o in overrides if is_interval(o)]
            if searched:
                raise UserError(
                    f"{searched[0]}: interval(...) is a search range, which only a search sweeper draws "
                    "from. Add hydra/sweeper=search (Bayesian search with Optuna), or list the values to "
                    "run, e.g. optimizer.lr=1e-4,1e-3,1e-2 or range(...)."
                )
        overrides = [o for o in (first_value(o) for o in overrides) if o is not None]
    try:
        cfg = compose_config(overrides)
    except MissingConfigException as e:
        raise UserError(_no_such_option(e, overrides)) from None
    except ConfigCompositionException as e:
        raise UserError(_no_such_key(e, overrides)) from None
    if not multirun:
        validate_config(cfg)
    return cfg


def _no_such_option(e: Exception, overrides: list[str]) -> str:
    pairs = [o.split("=", 1) for o in overrides if "=" in o]
    found = next(((g, v) for g, v in pairs if f"'{g}/{v}'" in str(e)), None)
    if found is None:
        return str(e).splitlines()[0]
    group, value = found
    options = [o for o in getattr(e, "options", None) or [] if not o.startswith("_")]
    close = difflib.get_close_matches(value, options, n=2)
    return (
        f"{group}={value}: there is no such option (no conf/{group}/{value}.yaml). "
        + (f"Did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else "")
        + f"Options: {', '.join(options)}."
    )


# keys that moved to the node of what they configure
MOVED_KEYS = {
    "model.bn": "finetune.bn",
    "model.cache_features": "finetune.cache_features",
    "optimizer.backbone_lr_mult": "finetune.backbone_lr_mult",
    "optimizer.layer_decay": "finetune.layer_decay",
    "scheduler.interval": "schedule.interval",
    "scheduler.warmup_epochs": "schedule.warmup_epochs",
    "optimizer.fused": "+optimizer.fused (passed to the torch optimizer; fused is the default on CUDA)",
}


def _no_such_key(e: Exception, overrides: list[str]) -> str:
    full_key = getattr(e.__cause__, "full_key", None)
    if not full_key:
        return str(e).splitlines()[0]
    if full_key in MOVED_KEYS:
        bad = next((o for o in overrides if key_of(o) == full_key), full_key)
        return f"{bad}: {full_key} is now {MOVED_KEYS[full_key]}; write that instead."
    parent, _, leaf = str(full_key).rpartition(".")
    bad = next((o for o in overrides if key_of(o) == full_key), full_key)
    try:
        rest = compose_config([o for o in overrides if o != bad])
        node = OmegaConf.select(rest, parent) if parent else rest
        keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    except Exception:
        keys = []
    close = difflib.get_close_matches(leaf, keys, n=1)
    where = f"in {parent}" if parent else "at the top level"
    return (
        f"{bad}: there is no key {leaf!r} {where}. "
        + (f"Did you mean {(parent + '.') if parent else ''}{close[0]}? " if close else "")
        + (f"Keys {where}: {', '.join(keys)}. " if keys else "")
        + f"To add a new key on purpose, write +{bad}."
    )
