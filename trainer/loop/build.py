"""``build_run``: the one reader of the config. It builds each part in order and logs what it built:

seed -> device -> data -> model -> loaders -> loss -> stage plan (optimizer, schedule) -> tracker -> Run.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import default_collate

from trainer.config.overrides import key_of
from trainer.config.schema import check_run, resolve_monitor, validate_config
from trainer.config.targets import check_targets, instantiate_node
from trainer.config.untrusted import load_yaml
from trainer.config.values import parse_duration
from trainer.data.counts import WEIGHT_KEYS, balanced_values
from trainer.data.datasets import Splits
from trainer.data.duplicates import check_duplicates
from trainer.data.fingerprint import check_same_data, fingerprint
from trainer.data.folds import fold_splits
from trainer.data.images import BadImageLog, native_size, verify_splits
from trainer.data.loaders import Loaders, build_loaders, default_num_workers
from trainer.data.mixing import build_mixing
from trainer.data.sources import capabilities, require
from trainer.data.transforms import auto_image_size, resolve_input
from trainer.distributed import collectives as dist
from trainer.errors import UserError
from trainer.loop import variant as variants
from trainer.loop.batch_size import ProbeStep, choose, first_sample, probe_largest
from trainer.loop.budget import BudgetPlan, Clock, TimeBudget, plan_budget
from trainer.loop.devices import resolve_channels_last, resolve_compile, resolve_device, resolve_precision
from trainer.loop.distill import build_teacher
from trainer.loop.lr_find import find_lr
from trainer.loop.optim import build_optimizer, runtime_kwargs
from trainer.loop.parts import Parts
from trainer.loop.policies import EarlyStop, Policy
from trainer.loop.run import Run, Settings
from trainer.loop.schedules import Schedule, build_schedule
from trainer.loop.stages import StagePlan, head_epochs_for, plan_stages, started_head_epochs
from trainer.loop.steps import autocast_for
from trainer.losses import loss_fits, options_for
from trainer.models import BuiltModel
from trainer.runs.checkpoint import checkpoint_of, load_checkpoint
from trainer.runs.loggers import Sink, missing_extra
from trainer.runs.tracking import NullTracker, Tracker, chosen_hparams, flat_hparams

log = logging.getLogger("trainer")


def build_parts(
    cfg: DictConfig, changes: dict[str, Any] | None = None, share: Any = None, size_batch: Callable | None = None
) -> Parts:
    """The data, model, loss and loaders a config describes, on its device and in its precision: what
    scoring needs, and no optimizer, schedule, tracker, timing, probe or search. ``changes``, ``share``:
    as for ``build_run``; ``size_batch``: training's data.batch_size=auto step, run before the loaders."""
    prepare_config(cfg, changes, share)
    device = setup_device(cfg)
    seed_everything(int(cfg.seed) + dist.rank())  # each rank its own streams; DDP copies rank 0's weights
    precision = resolve_precision(str(cfg.trainer.precision), device)
    splits = setup_data(cfg)
    check_run(cfg, splits.task, len(splits.classes), device.type, dist.is_distributed())
    built = setup_model(cfg, splits)
    channels_last = resolve_channels_last(cfg.trainer.channels_last, device, built.model)
    if device.type == "cpu" and "auto" in (str(cfg.trainer.precision), str(cfg.trainer.channels_last)):
        quick = variants.rule(
            variants.candidates(str(cfg.trainer.precision), cfg.trainer.channels_last, built.model), built.model
        )
        precision, channels_last = quick.precision, quick.channels_last  # training may measure (setup_variant)
    loss_fn = setup_loss(cfg, splits)
    if size_batch is not None:
        size_batch(splits, built, (device, precision), loss_fn)
    elif str(cfg.data.batch_size) == "auto":  # scoring measures nothing: a run's saved config has a number
        cfg.data.batch_size = SCORING_BATCH
    loaders = setup_loaders(cfg, splits, built, device)
    bad_images = BadImageLog(len(splits.train) + len(splits.val), float(cfg.data.max_bad_fraction))
    return Parts(
        splits,
        built,
        loss_fn,
        loaders,
        device,
        precision,
        cfg.data.get("ignore_index"),
        bad_images,
        channels_last,
        # a run saved before the setting was scored in its training precision: so it is scored again
        str(cfg.trainer.get("eval_precision", "same")),
    )


SCORING_BATCH = 64


def build_run(
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    changes: dict[str, Any] | None = None,
    share: Any = None,
    clock: Clock | None = None,
) -> Run:
    """The run a config describes, ready to ``fit()`` (resumed when ``resume`` names a checkpoint): its
    parts (``build_parts``) and what training needs.

    The one reader of a run's config. ``changes``: keys the caller sets before it is read (a sweep job
    resuming its own last.pt); ``share``: a parallel sweep job's part of the machine (sweeps/job.py).
    Relative paths are made absolute here, so the checkpoint finds the data elsewhere. ``clock``: what a
    time budget counts from (default: now)."""
    if run_dir is None:
        run_dir = HydraConfig.get().runtime.output_dir
    resumed: list[dict[str, Any] | None] = [None]

    def size_batch(splits: Splits, built: BuiltModel, device_precision: tuple, loss_fn: torch.nn.Module) -> None:
        resumed[0] = load_resumed(cfg)
        setup_batch_size(cfg, splits, built, device_precision, loss_fn, resumed[0])

    parts = build_parts(cfg, changes, share, size_batch)
    setup_variant(cfg, parts, resumed[0])
    splits, loaders, device = parts.splits, parts.loaders, parts.device
    monitor, mode = resolve_monitor(cfg, splits.task)
    auto_lr = str(cfg.optimizer.get("lr")) == "auto"
    if auto_lr:
        cfg.optimizer.lr = 1e-3  # a stand-in: the range test sets it once the run is built
    plan = setup_stage_plan(cfg, device, mode)
    log.info(
        "task %s; loss %s; device %s, precision %s", splits.task, type(parts.loss_fn).__name__, device, parts.precision
    )
    settings = setup_settings(cfg, splits.task, (device, parts.precision, parts.channels_last), (monitor, mode))
    settings = dataclasses.replace(settings, cache_features=cache_features(cfg, splits, settings.cache_features))
    run = Run(
        built=parts.built,
        loaders=loaders,
        classes=splits.classes,
        loss_fn=parts.loss_fn,
        plan=plan,
        settings=settings,
        tracker=setup_tracker(cfg, Path(run_dir), loaders),
        mixing=build_mixing(
            float(cfg.data.get("mixup") or 0),
            float(cfg.data.get("cutmix") or 0),
            len(splits.classes),
            int(cfg.seed),
            parts.loss_fn,
        ),
        bad_images=parts.bad_images,
        run_dir=Path(run_dir),
        policies=setup_policies(cfg, monitor),
    )
    run.teacher = setup_teacher(cfg, splits, device, loaders, run.autocast)
    if auto_lr:
        run.enter_stage(0)
        set_found_lr(run, cfg, find_lr(run))
    resume_or_start(cfg, run, splits, resumed[0], clock or Clock())
    return run


def setup_variant(cfg: DictConfig, parts: Parts, resumed: dict[str, Any] | None) -> None:
    """trainer.precision / trainer.channels_last = auto on a CPU: the variant that trains this model
    fastest here (loop/variant.py), or the one a resumed checkpoint trained in. The choice is written into
    the config, so the checkpoint, a resume and ``evaluate`` use it too."""
    precision, layout = str(cfg.trainer.precision), cfg.trainer.channels_last
    if parts.device.type != "cpu" or (precision != "auto" and layout != "auto"):
        return
    model = parts.built.model
    options = variants.candidates(precision, layout, model)
    stored = stored_variant(resumed)
    if stored in options:
        chosen, why = stored, "the variant the resumed checkpoint trained in"
    elif dist.is_distributed() or cfg.data.get("decode", "workers") == "device":  # build_parts chose by the rule
        chosen, why = variants.Variant(parts.precision, parts.channels_last), "the rule (every process the same)"
    else:
        # at most this many steps (trainer.epochs caps a time budget too)
        steps = int(cfg.trainer.epochs) * -(-len(parts.loaders.train) // int(cfg.trainer.accumulate))
        batch = int(cfg.data.batch_size)
        key = variants.cache_key(str(cfg.model.name), int(parts.loaders.input_spec["size"]), batch, parts.task)

        def one_batch() -> tuple[torch.Tensor, Any]:
            x, y = default_collate([first_sample(parts.loaders.train.dataset)] * batch)
            return x.float(), y

        def measure(option: variants.Variant) -> float:
            return variants.time_step(model, parts.loss_fn, one_batch, option)

        chosen, why = variants.choose(options, model, key, steps, measure)
    parts.precision, parts.channels_last = chosen.precision, chosen.channels_last
    cfg.trainer.precision, cfg.trainer.channels_last = chosen.precision, chosen.channels_last
    log.info("on this CPU: %s (trainer.precision, trainer.channels_last = auto): %s", chosen, why)


def stored_variant(resumed: dict[str, Any] | None) -> variants.Variant | None:
    """The precision and layout the config stored in a checkpoint says it trained in (None: not stored)."""
    if resumed is None or not resumed.get("config"):
        return None
    stored = load_yaml(resumed["config"], "the config stored in the checkpoint")
    trainer = stored.get("trainer", {}) if isinstance(stored, dict) else {}
    precision, layout = trainer.get("precision"), trainer.get("channels_last")
    if precision not in ("fp32", "bf16") or not isinstance(layout, bool):
        return None
    return variants.Variant(precision, layout)


def prepare_config(cfg: DictConfig, changes: dict[str, Any] | None, share: Any) -> None:
    """The caller's changes, absolute paths, a sweep job's share of the machine; then the checks every
    caller gets: what ``_target_`` may build (resume brings configs from files), types and ranges."""
    for key, value in (changes or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    anchor_paths(cfg)
    if str(cfg.optimizer.get("_target_", "")).endswith("LBFGS") and cfg.trainer.channels_last == "auto":
        cfg.trainer.channels_last = False  # LBFGS views each gradient flat: it needs them contiguous
    if share is not None:
        apply_share(cfg, share)
    check_targets(cfg, extra=tuple(cfg.get("allow_targets") or ()))
    validate_config(cfg)


def load_resumed(cfg: DictConfig) -> dict[str, Any] | None:
    """The checkpoint ``resume`` names, read once (None when the run starts fresh)."""
    if cfg.get("resume") and str(cfg.resume) == "auto":
        raise UserError("resume=auto chooses one run to continue: it does not combine with -m (multirun).")
    return load_checkpoint(checkpoint_of(str(cfg.resume))) if cfg.get("resume") else None


def resume_or_start(cfg: DictConfig, run: Run, splits: Splits, resumed: dict[str, Any] | None, clock: Clock) -> None:
    """``resume``: the checkpoint's state (on the same data, its head stage and budget plan kept); else
    the first stage. A time budget is planned here either way."""
    run.data_fingerprint = fingerprint(splits)
    if resumed is not None:
        check_same_data(resumed.get("data"), run.data_fingerprint, bool(cfg.get("resume_on_changed_data")))
        keep_head_stage(cfg, run, resumed)
    setup_budget(cfg, run, resumed, clock)
    if resumed is not None:
        run.resume_from(cfg.resume, resumed)
    else:
        run.enter_stage(0)


def setup_settings(
    cfg: DictConfig, task: str, variant: tuple[torch.device, str, bool], monitor: tuple[str, str]
) -> Settings:
    """What the loop needs of trainer.*, checkpoint.*, data.* and finetune.*, resolved (``variant``: the
    device, precision and memory layout chosen)."""
    device, precision, channels_last = variant
    return Settings(
        epochs=int(cfg.trainer.epochs),
        device=device,
        precision=precision,
        eval_precision=str(cfg.trainer.eval_precision),
        task=task,
        accumulate=int(cfg.trainer.accumulate),
        clip_grad_norm=cfg.trainer.clip_grad_norm,
        log_every=int(cfg.trainer.log_every),
        nonfinite=str(cfg.trainer.nonfinite),
        every_n_steps=int(cfg.checkpoint.every_n_steps),
        keep_last=int(cfg.checkpoint.keep_last),
        monitor=monitor[0],
        mode=monitor[1],
        ignore_index=cfg.data.get("ignore_index"),
        channels_last=channels_last,
        compile_backend=resolve_compile(cfg.trainer.compile),
        cache_features=resolve_cache_features(
            cfg.finetune.cache_features, cfg.data, cfg.get("distill", {}).get("teacher")
        ),
        sync_bn=bool(cfg.trainer.sync_bn),
        ema_decay=cfg.trainer.get("ema_decay"),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
    )


def setup_policies(cfg: DictConfig, monitor: str) -> list[Policy]:
    """What varies the run on the loop's hooks (the time budget joins them in setup_budget)."""
    patience = cfg.trainer.get("early_stop_patience")
    policies: list[Policy] = [EarlyStop(int(patience), monitor)] if patience else []
    race = cfg.get("race") or {}
    if race.get("storage") and race.get("trial") is not None:  # a job of hydra/sweeper=race
        from trainer.loop.race import RaceTrial

        until, deadline = race.get("until"), race.get("deadline")
        policies.append(
            RaceTrial(
                str(race.storage),
                int(race.trial),
                int(until) if until is not None else None,
                float(deadline) if deadline is not None else None,
                monitor,
            )
        )
    return policies


def set_found_lr(run: Run, cfg: DictConfig, lr: float) -> None:
    """optimizer.lr=auto: the run trains with the range test's lr, and its saved config says so."""
    cfg.optimizer.lr = run.plan.lr = lr
    run.settings = dataclasses.replace(run.settings, config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    log.info("optimizer.lr=auto: training with optimizer.lr=%.2e", lr)


PATH_KEYS = (
    "data.root",
    "data.csv",
    "data.val_csv",
    "data.train",
    "data.val",
    "data.path",
    "model.weights",
    "distill.teacher",
)


def anchor_paths(cfg: DictConfig) -> None:
    """Relative paths are the launch folder's, also with hydra.job.chdir=true (the run then works in
    its own folder); the checkpoint keeps them absolute, so evaluating it elsewhere finds the data."""
    from hydra.utils import to_absolute_path

    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value and value != "???" and not value.startswith(("package:", "/", "pipe:")):
            if "://" in value:
                continue  # a URL (streamed shards)
            if key in ("distill.teacher", "data.path") and not Path(value).expanduser().exists():
                continue  # a timm model name; a Hugging Face hub name
            OmegaConf.update(cfg, key, to_absolute_path(str(Path(value).expanduser())), merge=False)


def apply_share(cfg: DictConfig, share: Any) -> None:
    """A parallel sweep job on its own GPU (when it asks for cuda or auto), else on its share of the cores."""
    if share.gpu is not None and str(cfg.trainer.device) in ("auto", "cuda"):
        cfg.trainer.device = f"cuda:{share.gpu}"
        torch.cuda.set_device(share.gpu)
        log.info("parallel sweep: job %s on cuda:%d", share.job, share.gpu)
    else:
        torch.set_num_threads(share.threads)
        log.info("parallel sweep: job %s on %d CPU threads", share.job, torch.get_num_threads())


def setup_teacher(cfg: DictConfig, splits: Splits, device: torch.device, loaders: Loaders, autocast: Any) -> Any:
    """distill.*: the teacher and its loss (a no-op without distill.teacher)."""
    d = cfg.get("distill") or {}
    return build_teacher(
        d.get("teacher"),
        float(d.get("alpha", 0.5)),
        float(d.get("temperature", 4.0)),
        tuple(cfg.get("allow_targets") or ()),
        splits,
        device,
        loaders.input_spec,
        autocast,
    )


def setup_device(cfg: DictConfig) -> torch.device:
    """trainer.device, and under torchrun this process's GPU and the process group."""
    device = resolve_device(str(cfg.trainer.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if not dist.is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    dist.init(device.type == "cuda")
    if not dist.is_main():
        logging.getLogger("trainer").setLevel(logging.WARNING)
    log.info(
        "distributed: %d processes (%s), this is rank %d; data.batch_size=%d per process",
        dist.world_size(),
        "nccl" if device.type == "cuda" else "gloo",
        dist.rank(),
        int(cfg.data.batch_size),
    )
    return device


def build_splits(cfg: DictConfig) -> Splits:
    """The train and val images a config's data describes (files read as data.exif says; a fold's split)."""
    splits = instantiate_node(cfg.data.dataset)
    splits.orient(cfg.data.get("exif", "apply") == "apply")
    if cfg.data.get("folds"):
        require(splits.train, "folds", f"data.folds={cfg.data.folds}")
        splits = fold_splits(splits, int(cfg.data.folds), int(cfg.data.get("fold") or 0), int(cfg.seed))
    return splits


def setup_data(cfg: DictConfig) -> Splits:
    log.info("building data %s", cfg.data.name)
    splits = build_splits(cfg)
    splits = check_duplicates(splits, str(cfg.data.get("duplicates", "drop_from_val")), f"data={cfg.data.name}")
    if cfg.data.verify:
        require(splits.train, "verify")
        verify_splits(splits.train, splits.val, float(cfg.data.max_bad_fraction))
    return splits


def setup_model(cfg: DictConfig, splits: Splits) -> BuiltModel:
    m = cfg.model
    log.info(
        "building model %s (%s, pretrained=%s, weights=%s) with a %d-class head",
        m.name,
        m.source,
        m.pretrained,
        m.get("weights"),
        len(splits.classes),
    )
    return instantiate_node(m)(num_classes=len(splits.classes), task=splits.task)


def setup_loaders(
    cfg: DictConfig, splits: Splits, built: BuiltModel, device: torch.device, batch_size: int | None = None
) -> Loaders:
    d = cfg.data
    workers = d.get("num_workers", "auto")
    on_gpu = device.type == "cuda"
    size = d.get("image_size")
    if size == "auto":
        model_size = int(built.data_config["input_size"][-1])
        size, why = auto_image_size(native_size(splits.train), model_size, device.type)
        if batch_size is None:  # not for the batch probe's own loaders
            log.info("data.image_size=auto: %d px (%s)", size, why)
    return build_loaders(
        splits,
        {**resolve_input(built.data_config, size, d.get("crop_pct")), "exif": d.get("exif", "apply")},
        batch_size=int(d.batch_size) if batch_size is None else batch_size,
        num_workers=default_num_workers(on_gpu) if workers in (None, "auto") else int(workers),
        augment=str(d.augment),
        random_erasing=float(d.get("random_erasing") or 0.0),
        sampler=str(d.get("sampler") or "shuffle"),
        decode_on_device=d.get("decode", "workers") == "device",
        seed=int(cfg.seed),
        on_gpu=on_gpu,
        rank=dist.rank(),
        world_size=dist.world_size(),
    )


def setup_batch_size(
    cfg: DictConfig,
    splits: Splits,
    built: BuiltModel,
    device_precision: tuple[torch.device, str],
    loss_fn: torch.nn.Module,
    resumed: dict[str, Any] | None,
) -> None:
    """data.batch_size=auto and trainer.effective_batch become numbers in the config (data.batch_size,
    trainer.accumulate), so the run's saved config holds them and a resume trains on with the same ones."""
    auto, wanted = str(cfg.data.batch_size) == "auto", cfg.trainer.get("effective_batch")
    if not auto and wanted is None:
        return
    if wanted is not None and _given("trainer.accumulate") and HydraConfig.initialized():
        raise UserError(
            "trainer.effective_batch sets trainer.accumulate (effective batch = data.batch_size x accumulate x "
            "processes): give one of the two, not both."
        )
    if resumed is not None:
        saved = load_yaml(str(resumed.get("config") or ""), "the checkpoint's config") or {}
        batch = int(saved.get("data", {}).get("batch_size") or 0) if isinstance(saved, dict) else 0
        acc = int(saved.get("trainer", {}).get("accumulate") or 1) if isinstance(saved, dict) else 1
        if batch > 0:
            cfg.data.batch_size, cfg.trainer.accumulate = batch, acc
            log.info("data.batch_size=%d, trainer.accumulate=%d: as the checkpoint trained", batch, acc)
            return
    device, precision = device_precision
    if auto:
        largest, why = probe_batch(cfg, splits, built, device_precision, loss_fn)
        largest = min(dist.gather(largest)) if dist.is_distributed() else largest
    else:
        largest, why = int(cfg.data.batch_size), f"data.batch_size={cfg.data.batch_size}"
    choice = choose(
        largest, why, None if wanted is None else int(wanted), int(cfg.trainer.accumulate), dist.world_size(), auto
    )
    cfg.data.batch_size, cfg.trainer.accumulate = choice.batch_size, choice.accumulate
    log.info("data.batch_size=%d, trainer.accumulate=%d: %s", choice.batch_size, choice.accumulate, choice.why)


def probe_batch(
    cfg: DictConfig,
    splits: Splits,
    built: BuiltModel,
    device_precision: tuple[torch.device, str],
    loss_fn: torch.nn.Module,
) -> tuple[int, str]:
    """The batch ``batch_size.probe_largest`` measures for this model, data, device and precision."""
    device, precision = device_precision
    if cfg.data.get("decode", "workers") == "device":
        raise UserError("data.batch_size=auto does not combine with data.decode=device: give data.batch_size a number.")
    level = log.level
    log.setLevel(logging.WARNING)  # the probe's own loaders are not the run's: not logged
    try:
        sample_set = setup_loaders(cfg, splits, built, device, batch_size=1).train.dataset
    finally:
        log.setLevel(level)
    memory_format = (
        torch.channels_last
        if resolve_channels_last(cfg.trainer.channels_last, device, built.model)
        else torch.preserve_format
    )
    built.model.to(device=device, memory_format=memory_format)
    loss_fn.to(device)
    autocast = autocast_for(device.type, precision)
    step = ProbeStep(built.model, loss_fn, first_sample(sample_set), device, autocast, memory_format)
    return probe_largest(step, device, cap=max(1, len(splits.train) // dist.world_size()))


def setup_loss(cfg: DictConfig, splits: Splits) -> torch.nn.Module:
    """The loss option, told the task and the data's ignore_index when it takes them, its class weights
    computed where given as ``balanced``; refused when it cannot serve the task (torch's own losses by
    name before they are built, ours by their ``tasks``)."""
    target, task = str(cfg.loss._target_), splits.task

    def refuse(why: str) -> None:
        options = ", loss=".join(options_for(task))
        raise UserError(f"loss {target} cannot train a {task} task: {why}. For {task} use one of: loss={options}.")

    why = loss_fits(None, target, task)
    if why:
        refuse(why)
    loss_class = get_object(target)
    ignore = cfg.loss.get("ignore_index")
    ignore = cfg.data.get("ignore_index") if ignore is None else ignore
    if ignore is None and "ignore_index" in runtime_kwargs(loss_class, {"ignore_index": None}):
        ignore = inspect.signature(loss_class).parameters["ignore_index"].default  # torch's own: -100
    asked = [k for k in WEIGHT_KEYS if str(cfg.loss.get(k)) == "balanced"]
    if asked:
        require(splits.train, "balanced", f"loss.{asked[0]}=balanced")
    weights = balanced_values(asked, loss_class, splits.train.targets, splits.classes, task) if asked else {}
    if target.startswith("torch."):  # torch's own losses take tensors
        weights = {k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()}
    runtime = runtime_kwargs(loss_class, {"task": task, "ignore_index": ignore})
    loss_fn = instantiate_node(cfg.loss, **runtime, **weights)
    why = loss_fits(loss_fn, target, task)
    if why:
        refuse(why)
    return loss_fn


def keep_head_stage(cfg: DictConfig, run: Run, resumed: dict[str, Any]) -> None:
    """finetune.head_epochs=auto depends on the run's length: a resumed run (perhaps made longer) keeps the
    head stage it started with, as its checkpoint records it."""
    head = started_head_epochs(resumed)
    if str(cfg.finetune.head_epochs) == "auto" and not cfg.finetune.stages and head is not None:
        run.plan.stages = plan_stages(None, head, run.state.epochs)


def setup_budget(cfg: DictConfig, run: Run, resumed: dict[str, Any] | None, clock: Clock) -> None:
    """trainer.time_budget: the epochs and the head stage chosen to fit it (timed now, or the plan a
    resumed checkpoint was trained with), the stages and the run's length set from them, and the
    policy that follows the plan (first: its reason to stop is the one the log gives)."""
    budget_s = parse_duration(cfg.trainer.get("time_budget"))
    if budget_s is None:
        return
    ft = cfg.finetune
    plan = BudgetPlan.resumed(resumed) if resumed is not None else None
    if plan is None:
        cap = int(cfg.trainer.epochs) if _given("trainer.epochs") else None
        head_fixed = ft.head_epochs != "auto" and int(ft.head_epochs) > 0
        plan = plan_budget(run, budget_s, cap, lambda e: head_epochs_for(ft.head_epochs, e), head_fixed, clock)
    run.plan.stages = plan.shorten(plan_stages(ft.stages, plan.head_epochs, plan.epochs))
    run.state.epochs, run.state.budget = plan.epochs, plan
    run.policies.insert(0, TimeBudget(plan, clock))
    for line in plan.lines():
        log.info(line)


def _given(key: str) -> bool:
    """``key`` was set on the command line (always, outside a Hydra app)."""
    if not HydraConfig.initialized():
        return True
    return any(key_of(o) == key for o in HydraConfig.get().overrides.task)


def setup_stage_plan(cfg: DictConfig, device: torch.device, monitor_mode: str) -> StagePlan:
    """The stages and the builders of each stage's optimizer and schedule."""
    ft = cfg.finetune
    make_optimizer = optimizer_builder(cfg, device)
    return StagePlan(
        stages=plan_stages(ft.stages, ft.head_epochs, int(cfg.trainer.epochs)),
        lr=float(cfg.optimizer.lr),
        weight_decay=float(cfg.optimizer.get("weight_decay") or 0.0),
        backbone_lr_mult=float(ft.backbone_lr_mult),
        layer_decay=ft.layer_decay,
        freeze=cfg.model.get("freeze", "none"),
        bn_mode=str(ft.bn),
        make_optimizer=make_optimizer,
        make_schedule=schedule_builder(cfg, monitor_mode),
    )


def optimizer_builder(cfg: DictConfig, device: torch.device) -> Callable[[list[dict[str, Any]], Any], Any]:
    factory = instantiate_node(cfg.optimizer)
    return lambda groups, model: build_optimizer(factory, groups, model, device)


def schedule_builder(cfg: DictConfig, monitor_mode: str = "max") -> Callable[..., Schedule]:
    """``(optimizer, steps_per_epoch, epochs) -> Schedule`` for the scheduler option and ``schedule.*``."""
    factory = instantiate_node(cfg.scheduler)
    interval, warmup = str(cfg.schedule.interval), float(cfg.schedule.warmup_epochs)
    return lambda opt, steps, epochs, total=None: build_schedule(
        factory, opt, steps, epochs, interval, warmup, monitor_mode, total
    )


def setup_tracker(cfg: DictConfig, run_dir: Path, loaders: Loaders) -> Tracker:
    hp = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(hp, dict)
    hp.pop("resume", None)
    spec = loaders.input_spec
    overridden = None
    if HydraConfig.initialized():
        overridden = [key_of(o) for o in HydraConfig.get().overrides.task]
    hparams = chosen_hparams(flat_hparams(hp), overridden)
    mean, std = tuple(spec["mean"]), tuple(spec["std"])
    if not dist.is_main():
        return NullTracker(run_dir, hparams, mean, std, sinks=[])
    return Tracker(run_dir, hparams, mean, std, sinks=setup_loggers(cfg, run_dir, hparams))


def sweep_name() -> str | None:
    """The sweep's folder (outputs/multirun/<date>/<time>) when this run is a job of one."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return None
    folder = Path(HydraConfig.get().sweep.dir)
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def setup_loggers(cfg: DictConfig, run_dir: Path, hparams: dict[str, Any]) -> list[Sink]:
    """logger.*: each chosen logger's sink (its ``_target_``) with the run's values, a sweep's jobs grouped
    (the sweep's folder names the MLflow experiment and the W&B group); a missing extra is refused
    before any training."""
    chosen = cfg.get("logger") or {}
    sweep = sweep_name()
    run_name = run_dir.name if sweep is None else f"{Path(sweep).name}/{run_dir.name}"
    runtime = {"run_dir": run_dir, "hparams": hparams, "run_name": run_name, "sweep": sweep}
    sinks: list[Sink] = []
    for name in chosen:
        node = chosen[name]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        try:
            sink_class = get_object(str(target)) if target else None
        except Exception as e:  # not importable: the user's module is not installed or not on PYTHONPATH
            cause = e.__cause__ or e
            raise UserError(
                f"logger.{name}._target_={target}: cannot be imported ({type(cause).__name__}: {cause}). Install the "
                "package that holds it, or run where Python finds it (e.g. PYTHONPATH=. train ...)."
            ) from None
        if not (isinstance(sink_class, type) and issubclass(sink_class, Sink)):
            raise UserError(
                f"logger.{name}: no such logger. Use tensorboard, csv, mlflow or wandb (several: "
                "logger=[tensorboard,mlflow]), or a Sink subclass as logger.<name>._target_."
            )
        why = missing_extra(sink_class, name)
        if why:
            raise UserError(why)
        make = instantiate_node(node, _partial_=True)  # the run's values passed as they are, not as config
        sinks.append(make(**runtime_kwargs(sink_class, runtime)))
    return sinks


def resolve_cache_features(value: Any, data: DictConfig, teacher: Any = None) -> bool:
    """auto: cache a linear probe's backbone features when data.augment=none. The cached features are
    then exactly what the probe would compute each epoch (the same resize and crop), so only the time
    changes: one backbone forward in all instead of one per epoch. With augmentation on, caching would
    train on unaugmented images, so auto leaves it off (true forces it); so it does with mixup/cutmix."""
    if value == "auto":
        return str(data.augment) == "none" and not data.get("random_erasing") and not mixes(data) and not teacher
    return bool(value)


def cache_features(cfg: DictConfig, splits: Splits, resolved: bool) -> bool:
    """finetune.cache_features on a source that cannot be read by index: auto is off, true is refused."""
    if resolved and not capabilities(splits.train).cached_features:
        if str(cfg.finetune.cache_features) != "auto":
            require(splits.train, "cached_features")
        return False  # auto: the features are computed each epoch
    return resolved


def mixes(data: DictConfig) -> bool:
    return bool(data.get("mixup") or data.get("cutmix"))


def seed_everything(seed: int) -> None:

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
