"""The config's one schema and every refusal: types and ranges, task/loss/metric fit, DDP limits.

Only Hydra and OmegaConf are imported here, so a typo answers at once, without loading torch.
``validate_config`` runs on the composed config; ``check_run`` once the data's task is known.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.config.overrides import first_value, is_interval, key_of
from trainer.config.settings import SETTINGS, type_ok
from trainer.config.tasks import task_named
from trainer.errors import UserError


def _conf_dir() -> str:
    """The configs: inside the installed package (a wheel), else the repository's top-level conf/."""
    package = Path(__file__).resolve().parent.parent  # trainer/
    packaged = package / "conf"
    return str(packaged if (packaged / "train.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()


def validate_config(cfg: DictConfig) -> None:
    """Raise UserError for the first value that is of the wrong type or out of range."""
    for key, setting in SETTINGS.items():
        value = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False)
        if value == "<absent>" or (value is None and setting.nullable):
            continue
        if value is None or not type_ok(value, setting.kind) or not setting.check(value):
            raise UserError(f"{key}={value!r} is not valid: use {setting.valid}{_example(key)}.")


def _example(key: str) -> str:
    """' (e.g. key=<default>)', from the default config, when it can be composed here."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
        return ""
    default = OmegaConf.select(compose_config([]), key, default=None)
    return f" (e.g. {key}={default})" if default is not None else ""


def resolve_monitor(cfg: DictConfig, task: str) -> tuple[str, str]:
    """checkpoint.monitor / mode; ``auto`` picks the task's main metric (val/acc, val/mAP, val/mIoU)."""
    monitor = str(cfg.checkpoint.get("monitor", "auto"))
    monitor = task_named(task).monitor if monitor == "auto" else monitor
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
    if task_named(task).per_pixel and cfg.finetune.get("cache_features") is True:
        raise UserError(
            "finetune.cache_features=true is for classifiers (a linear probe); a segmentation decoder "
            "trains on feature maps of augmented images: set finetune.cache_features=false."
        )
    monitor, _ = resolve_monitor(cfg, task)
    names = task_named(task).metric_names(num_classes)
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
            "trainer.channels_last=true": cfg.trainer.get("channels_last") is True,
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
    if task_named(task).per_pixel:
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
    if mixing and not task_named(task).soft_labels:
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
