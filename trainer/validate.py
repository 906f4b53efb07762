"""Config mistakes caught before anything is built: unknown keys and options, wrong types, bad values.

Only Hydra and OmegaConf are imported here, so a typo answers at once, without loading torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

Check = Callable[[Any], bool]


def _int(lo: int) -> tuple[type, Check, str]:
    return int, lambda v: v >= lo, f"an integer >= {lo}"


def _pos_float(strict: bool = True) -> tuple[type, Check, str]:
    return float, (lambda v: v > 0) if strict else (lambda v: v >= 0), "a number > 0" if strict else "a number >= 0"


def _choice(*values: str) -> tuple[type, Check, str]:
    return str, lambda v: v in values, "one of " + ", ".join(values)


# key -> (type, check, what is valid); a null value is allowed where listed in NULLABLE
RULES: dict[str, tuple[type, Check, str]] = {
    "trainer.epochs": _int(1),
    "trainer.accumulate": _int(1),
    "trainer.log_every": _int(1),
    "trainer.clip_grad_norm": _pos_float(),
    "trainer.precision": _choice("auto", "fp32", "bf16", "fp16"),
    "trainer.nonfinite": _choice("stop", "skip"),
    "trainer.devices": _int(1),
    "trainer.sync_bn": (bool, lambda v: True, "true or false"),
    "trainer.compile": (object, lambda v: isinstance(v, (bool, str)), "true, false or a torch.compile backend "
                                                                        "(e.g. inductor, aot_eager)"),
    "optimizer.lr": _pos_float(),
    "optimizer.weight_decay": _pos_float(strict=False),
    "optimizer.backbone_lr_mult": _pos_float(strict=False),
    "optimizer.layer_decay": (float, lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.75"),
    "data.batch_size": _int(1),
    "data.val_split": (float, lambda v: 0 < v < 1, "a number between 0 and 1, e.g. 0.2"),
    "data.image_size": _int(8),
    "data.augment": _choice("none", "affine", "flip_crop"),
    "data.decode": _choice("workers", "device"),
    "data.max_bad_fraction": (float, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 0.01"),
    "data.verify": (bool, lambda v: True, "true or false"),
    "checkpoint.monitor": (str, lambda v: v == "auto" or v.startswith("val/"),
                           "auto or a val/ metric (val/acc, val/loss, val/f1_macro, val/mAP, val/mIoU, ...)"),
    "checkpoint.mode": _choice("auto", "max", "min"),
    "data.task": _choice("multiclass", "binary", "multilabel", "segmentation"),
    "data.ignore_index": _int(0),
    "scheduler.warmup_epochs": _pos_float(strict=False),
    "checkpoint.every_n_steps": _int(0),
    "checkpoint.keep_last": _int(1),
    "finetune.head_epochs": _int(0),
    "model.source": _choice("timm", "torchvision"),
    "model.bn": _choice("train", "frozen_stats", "frozen"),
    "model.pretrained": (bool, lambda v: True, "true or false"),
    "model.drop_rate": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "seed": _int(0),
}
NULLABLE = {"trainer.clip_grad_norm", "optimizer.layer_decay", "data.image_size", "optimizer.weight_decay",
            "data.ignore_index"}


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
    if workers not in ("auto", None) and not (_type_ok(workers, int) and workers >= 0):
        raise UserError(f"data.num_workers={workers!r} is not valid: use auto or an integer >= 0.")
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


def compose_config(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from trainer.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"):
        return compose("train", overrides=overrides)


def explain_overrides(overrides: list[str]) -> None:
    """Compose with the user's overrides; turn Hydra's composition errors into one clear paragraph."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        cfg = compose_config(overrides)
    except MissingConfigException as e:
        group = next((o.split("=", 1)[0] for o in overrides
                      if "=" in o and f"'{o.split('=', 1)[0]}/{o.split('=', 1)[1]}'" in str(e)), None)
        options = getattr(e, "options", None) or []
        if group is None:
            raise UserError(str(e).splitlines()[0]) from None
        value = next(o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == group)
        close = difflib.get_close_matches(value, options, n=2)
        raise UserError(f"{group}={value}: there is no such option (no conf/{group}/{value}.yaml). "
                        + (f"Did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else "")
                        + f"Options: {', '.join(options)}.") from None
    except ConfigCompositionException as e:
        cause = e.__cause__
        full_key = getattr(cause, "full_key", None)
        if not full_key:
            raise UserError(str(e).splitlines()[0]) from None
        parent, _, leaf = str(full_key).rpartition(".")
        bad = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == full_key), full_key)
        rest = [o for o in overrides if o != bad]
        try:
            node = OmegaConf.select(compose_config(rest), parent) if parent else compose_config(rest)
            keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        except Exception:
            keys = []
        close = difflib.get_close_matches(leaf, keys, n=1)
        where = f"in {parent}" if parent else "at the top level"
        raise UserError(f"{bad}: there is no key {leaf!r} {where}. "
                        + (f"Did you mean {(parent + '.') if parent else ''}{close[0]}? " if close else "")
                        + (f"Keys {where}: {', '.join(keys)}. " if keys else "")
                        + f"To add a new key on purpose, write +{bad}.") from None
    validate_config(cfg)
