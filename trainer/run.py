"""The run object: everything one training run has, its loop, and its state."""

from __future__ import annotations

import json
import logging
import os
import math
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainer import __version__
from trainer.checkpoint import (link_checkpoint, load_checkpoint, prune_checkpoints, rng_state, save_checkpoint,
                                set_rng_state)
from trainer import distributed as dist
from trainer.data import Loaders, build_loaders
from trainer.errors import UserError
from trainer.failpoints import failpoint
from trainer.finetune import Stage, plan_stages, stage_index
from trainer.models import BuiltModel, apply_freeze, build_model, is_convnet, resolve_freeze
from trainer.optim import (INTERVALS, OPTIMIZER_KEYS, SCHEDULER_KEYS, Schedule, is_metric_scheduler, param_groups,
                           runtime_kwargs)
from trainer.validate import validate_config

log = logging.getLogger("trainer")

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible: use trainer.device=auto or cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("trainer.device=mps but MPS is not available: use trainer.device=auto or cpu.")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"trainer.device={name!r} is not known: use auto, cpu, cuda or mps.")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise UserError(f"trainer.precision={name!r} is not known: use auto, fp32, bf16 or fp16.")
    return name


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flat_hparams(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config flattened to scalars for TensorBoard's HParams tab."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class Run:
    """One training run: model, data, loss, optimizer, schedule, logging and checkpoints."""

    def __init__(self, *, cfg: DictConfig, built: BuiltModel, loaders: Loaders, classes: list[str],
                 loss_fn: torch.nn.Module, device: torch.device, precision: str, run_dir: Path,
                 task: str = "multiclass") -> None:
        self.cfg = cfg
        self.built = built
        self.model, self.head_names, self.head = built.model, built.head_names, built.head
        self.weights_info = built.weights
        self.loaders, self.classes = loaders, classes
        self.loss_fn = loss_fn
        self.optimizer: torch.optim.Optimizer
        self.scheduler: Schedule
        self.task = task
        self.ignore_index = cfg.data.get("ignore_index")
        self.closure_step = False  # L-BFGS: the optimizer calls forward/backward itself
        self.device, self.precision = device, precision
        self.run_dir = Path(run_dir)
        t = cfg.trainer
        self.epochs = int(t.epochs)
        self.accumulate = max(1, int(t.accumulate))
        self.clip_grad_norm = float(t.clip_grad_norm) if t.clip_grad_norm else None
        self.log_every = max(1, int(t.log_every))
        self.every_n_steps = int(cfg.checkpoint.get("every_n_steps") or 0)
        self.keep_last = max(1, int(cfg.checkpoint.get("keep_last") or 1))
        self.bad_images: set[str] = set()
        self.max_bad_fraction = float(cfg.data.get("max_bad_fraction", 0.01) or 0.0)
        self.skip_nonfinite = str(t.get("nonfinite", "stop")) == "skip"
        self.skipped_steps = 0
        self.monitor, self.mode = resolve_monitor(cfg, task)
        # fixed now: len(loader) shrinks while the sampler starts part-way into a resumed epoch
        self.batches_per_epoch = len(loaders.train)
        self.stages: list[Stage] = plan_stages(cfg.get("finetune"), self.epochs)
        self.stage_idx: int | None = None
        self.bn_mode = str(cfg.model.get("bn", "train"))
        self.cache_features = bool(cfg.model.get("cache_features", False))
        # Linear probe: with the whole backbone frozen it runs in eval mode under no_grad, and the
        # head trains on the features it hands over (captured by this hook), or on cached ones.
        self.probe = False
        self.segmentation = task == "segmentation"  # the decoder takes feature lists: no probe shortcut
        self.head_only = False  # the whole backbone frozen: it runs in eval mode
        self.distributed = dist.is_distributed()
        self.ddp: Any = None  # DistributedDataParallel around self.model, rebuilt per stage
        self.main = dist.is_main()
        compile_cfg = cfg.trainer.get("compile", False)
        self.compile = compile_cfg not in (False, None, "false")
        self.compile_backend = compile_cfg if isinstance(compile_cfg, str) and compile_cfg != "true" else "inductor"
        self._compiled: tuple[Any, Any] | None = None  # (module, its compiled forward)
        self.last_eval: dict[str, Any] | None = None
        self.per_class_last: dict[str, Any] | None = None
        self.per_class_best: dict[str, Any] | None = None
        self.feature_cache: dict[str, torch.Tensor] = {}
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self.head.register_forward_pre_hook(lambda _m, args: self._captured.append(args[0]) if self._capturing else None)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # Switched-off features are no-op objects, not branches in the loop.
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        cl = t.get("channels_last", "auto")
        self.channels_last = (device.type == "cuda" and is_convnet(self.model)) if cl == "auto" else bool(cl)
        self.memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(device=device, memory_format=self.memory_format)
        self.loss_fn.to(device)
        # counters: the whole of the run's progress
        self.epoch = 0            # epochs completed
        self.batch_in_epoch = 0   # batches of the current epoch already trained
        self.global_step = 0      # optimizer steps
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.partial_loss = (0.0, 0)  # (sum, count) of train loss in the current epoch
        self.elapsed = 0.0        # training seconds over all sessions of this run
        self.images_logged = False
        self.finished = False
        self._writer: Any = None
        self.resumed_from: str | None = None
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ state
    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulate)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stage": self.stage_idx,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "per_class_best": self.per_class_best,
            "partial_loss": list(self.partial_loss),
            "partial_loss_ranks": dist.gather(list(self.partial_loss)) if self.distributed else None,
            "elapsed": self.elapsed,
            "images_logged": self.images_logged,
            "finished": self.finished,
            "sampler": {"epoch": self.epoch, "start": self.batch_in_epoch * self.loaders.batch_size},
            "rng": rng_state(),
            "rng_ranks": dist.gather(rng_state()) if self.distributed else None,
            "world_size": dist.world_size(),
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "classes": list(self.classes),
            "input_spec": {k: list(v) if isinstance(v, tuple) else v for k, v in self.loaders.input_spec.items()},
            "weights": dict(self.weights_info),
            "versions": {"trainer": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if list(state.get("classes", self.classes)) != list(self.classes):
            raise UserError(f"{source} was trained on classes {state['classes']}, but the data now has "
                            f"{self.classes}: resume with the same data, or start a new run.")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"{source} does not fit the model of this config (model.name="
                            f"{self.cfg.model.name}): {str(e).splitlines()[0]}. Resume with the config it "
                            "was saved with.") from None
        # the optimizer and schedule belong to the stage the checkpoint was written in
        saved_stage = state.get("stage")
        self._enter_stage(int(saved_stage) if saved_stage is not None else stage_index(self.stages, int(state["epoch"])))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as e:
            raise UserError(f"{source}: its optimizer or scheduler does not match this config ({e}). "
                            "Resume with the optimizer and scheduler it was saved with.") from None
        self.scaler.load_state_dict(state["scaler"])
        planned = OmegaConf.create(state["config"]).trainer.epochs if state.get("config") else None
        if planned is not None and int(state["epoch"]) >= int(planned) and self.epochs > int(planned):
            # Extending a finished run: the extra epochs get a fresh schedule of the same kind over their
            # own length (warm-up and decay again), with the optimizer state and weights carried on.
            remaining = self.epochs - int(state["epoch"])
            self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch, remaining)
            log.info("extending a finished run from %d to %d epochs: a fresh %s schedule over the %d new epochs",
                     int(planned), self.epochs, self.scheduler.name, remaining)
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        saved_world = int(state.get("world_size") or 1)
        if saved_world != dist.world_size() and self.batch_in_epoch:
            # the same share of the epoch, in this run's batches per process (not an exact continuation)
            self.batch_in_epoch = self.batch_in_epoch * saved_world // dist.world_size()
            log.warning("checkpoint written by %d process(es), resumed by %d: continuing the epoch at batch %d",
                        saved_world, dist.world_size(), self.batch_in_epoch)
        self.global_step = int(state["global_step"])
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.history = list(state["history"])
        self.per_class_best = state.get("per_class_best")
        partial = state["partial_loss"]
        if state.get("partial_loss_ranks") and len(state["partial_loss_ranks"]) == dist.world_size():
            partial = state["partial_loss_ranks"][dist.rank()]  # each rank's own running sum
        self.partial_loss = (float(partial[0]), int(partial[1]))
        self.elapsed = float(state["elapsed"])
        self.images_logged = bool(state.get("images_logged", False))
        self.finished = bool(state.get("finished", False)) and self.epoch >= self.epochs
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == dist.world_size():
            set_rng_state(ranks[dist.rank()])  # each rank continues its own random streams
        else:
            set_rng_state(state["rng"])
            if self.distributed or ranks:
                log.info("checkpoint written by %d process(es), resumed by %d: random streams restart from "
                         "rank 0's", len(ranks or [0]), dist.world_size())

    def resume_from(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        self.load_state_dict(state, source=f"checkpoint {path}")
        self.resumed_from = str(path)
        where = f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}" if self.batch_in_epoch else f"epoch {self.epoch + 1}"
        log.info("resumed from %s: continuing at %s (step %d) up to epoch %d", path, where,
                 self.global_step, self.epochs)

    def save(self, best: bool = False) -> Path:
        """A numbered checkpoint (the newest ``checkpoint.keep_last`` are kept), linked as last.pt (and best.pt).

        Distributed: every rank takes part (their random states are gathered); rank 0 writes.
        """
        folder = self.run_dir / "checkpoints"
        path = folder / f"epoch{self.epoch:03d}-step{self.global_step:07d}.pt"
        state = self.state_dict()
        if not self.main:
            return path
        path = save_checkpoint(state, path)
        link_checkpoint(path, folder / "last.pt")
        if best:
            link_checkpoint(path, folder / "best.pt")
        prune_checkpoints(folder, self.keep_last)
        return path

    # ------------------------------------------------------------------ logging
    @property
    def writer(self) -> Any:
        if self._writer is None and not self.main:
            self._writer = _NullWriter()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed session wrote after the checkpoint we resumed from
            self._writer = SummaryWriter(str(self.run_dir / "tb"),
                                         purge_step=self.global_step if self.resumed_from else None)
        return self._writer

    def _lrs(self) -> dict[str, float]:
        lrs: dict[str, float] = {}
        for g in self.optimizer.param_groups:
            lrs.setdefault(g.get("label", g.get("name", "group")), g["lr"])
        return lrs

    def _log_images(self, x: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        mean = torch.tensor(self.loaders.input_spec["mean"], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.loaders.input_spec["std"], device=x.device).view(1, -1, 1, 1)
        imgs = (x[:32].float() * std + mean).clamp(0, 1)
        self.writer.add_image("train/images", make_grid(imgs.cpu(), nrow=8), self.global_step)
        self.images_logged = True

    def _write_metrics(self, wall: float) -> dict[str, Any]:
        """metrics.json (rank 0 writes it); returns the summary on every rank."""
        last = self.history[-1] if self.history else {}
        summary = {
            "finished": self.finished,
            "monitor": self.monitor, "mode": self.mode,
            "best": self.best, "best_epoch": self.best_epoch,
            "epochs_done": self.epoch, "epochs": self.epochs, "global_step": self.global_step,
            "last": last, "history": self.history,
            "train_time_s": round(self.elapsed, 2), "wall_time_s": round(wall, 2),
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.run_dir / "checkpoints" / "best.pt") if self.best is not None else None,
            "weights": self.weights_info,
            "classes": self.classes,
            "task": self.task,
            "pid": os.getpid(),
            "per_class": {"last": self.per_class_last, "best": self.per_class_best},
        }
        if self.main:
            tmp = self.run_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            tmp.replace(self.run_dir / "metrics.json")
        return summary

    def _write_hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        if not self.main:
            return
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(cfg, dict)
        cfg.pop("resume", None)
        hp = flat_hparams(cfg)
        last = self.history[-1] if self.history else {}
        metrics = {"hparam/best": float(self.best) if self.best is not None else float("nan")}
        for k, v in last.items():
            if k.startswith("val/"):
                metrics["hparam/" + k[4:]] = float(v)
        for summary in hparams(hp, metrics):
            self.writer.file_writer.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, self.epoch)

    # ------------------------------------------------------------------ the loop
    def _enter_stage(self, index: int) -> None:
        """Freeze per the stage, then a fresh optimizer over its trainable parameters and its schedule."""
        st = self.stages[index]
        self.stage_idx = index
        backbone = {n for n, _ in self.model.named_parameters() if n not in self.head_names}
        if st.train == "head":
            frozen = backbone
        else:
            spec = st.freeze if st.freeze is not None else self.cfg.model.get("freeze", "none")
            frozen = resolve_freeze(spec, self.model, self.head_names)
        counts = apply_freeze(self.model, self.head_names, frozen, self.bn_mode)
        opt_cfg = self.cfg.optimizer
        lr = float(st.lr if st.lr is not None else opt_cfg.lr)
        mult = st.backbone_lr_mult if st.backbone_lr_mult is not None else opt_cfg.get("backbone_lr_mult", 1.0)
        layer_decay = st.layer_decay if st.layer_decay is not None else opt_cfg.get("layer_decay")
        wd = float(opt_cfg.get("weight_decay") or 0.0)
        groups = param_groups(self.model, self.head_names, lr, wd, float(mult if mult is not None else 1.0),
                              float(layer_decay) if layer_decay is not None else None)
        if not groups:
            raise UserError("nothing to train: every parameter is frozen (check model.freeze and model.bn).")
        self.optimizer = build_optimizer(self.cfg, self.model, groups, self.device)
        self.closure_step = isinstance(self.optimizer, torch.optim.LBFGS)
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch, st.epochs)
        self.head_only = backbone <= frozen
        # one process: the probe shortcut (features under no_grad); DDP needs its own forward
        self.probe = self.head_only and not self.segmentation and not self.distributed
        if self.distributed:
            self.ddp = _wrap_ddp(self.model, self.device, bool(self.cfg.trainer.get("sync_bn", False)))
        self.feature_cache = {}
        what = "the head only" if backbone <= frozen else ("all layers" if counts["frozen"] == 0 else "some layers")
        log.info("stage %d/%d, epochs %d-%d, %s: %s trainable / %s frozen params; BatchNorm %s (model.bn=%s)%s",
                 index + 1, len(self.stages), st.start + 1, st.end, what, f"{counts['trainable']:,}", f"{counts['frozen']:,}",
                 f"{counts['bn_frozen']} layers in eval mode", self.bn_mode,
                 "; linear probe: backbone in eval mode under no_grad" if self.probe else "")
        log.info("  %-26s %10s %10s %8s", "param group", "params", "lr", "wd")
        for g in self.optimizer.param_groups:
            log.info("  %-26s %10s %10.2e %8g", g["name"], f"{sum(p.numel() for p in g['params']):,}", g["lr"],
                     g["weight_decay"])
        log.info("  %s over %d groups; scheduler %s per %s", type(self.optimizer).__name__,
                 len(self.optimizer.param_groups), self.scheduler.name, self.scheduler.interval)

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone hands the head, for a batch (backbone in eval mode, no autograd)."""
        self._captured.clear()
        self._capturing = True
        try:
            with self.autocast():
                self.model(x)
        finally:
            self._capturing = False
        return self._captured.pop().float()

    def _build_feature_cache(self) -> None:
        t0 = time.perf_counter()
        self.model.eval()
        for split, loader in (("train", self.loaders.train_eval), ("val", self.loaders.val)):
            feats = []
            for x, _, bad in self._on_device(loader):
                if bad:
                    raise UserError(f"model.cache_features=true needs every image readable; broken: {bad[0]} "
                                    f"(and maybe more: data.verify=true lists them). Remove them or set "
                                    "model.cache_features=false.")
                feats.append(self._features(x))
            self.feature_cache[split] = torch.cat(feats)
        log.info("cached backbone features (augmentation off): train %s, val %s in %.1fs",
                 tuple(self.feature_cache["train"].shape), tuple(self.feature_cache["val"].shape),
                 time.perf_counter() - t0)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # cached features
            return self.head(x)
        if self.probe:
            return self.head(self._features(x))
        return self._train_forward(x)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.ddp or self.model
        if not self.compile:
            return module(x)
        if self._compiled is None or self._compiled[0] is not module:
            t0 = time.perf_counter()
            self._compiled = (module, torch.compile(module, backend=self.compile_backend))
            out = self._compiled[1](x)
            log.info("trainer.compile: compiled the training forward (%s) in %.1fs (first batch included)",
                     self.compile_backend, time.perf_counter() - t0)
            return out
        return self._compiled[1](x)

    def _on_device(self, loader: Any) -> Any:
        """The loader's batches on the training device, images normalized there (from uint8)."""
        from trainer.data import DeviceBatches

        spec = self.loaders.input_spec
        return DeviceBatches(loader, self.device, spec["mean"], spec["std"], self.memory_format)

    def _train_batches(self) -> Any:
        """The training batches of this epoch: images, or cached features in a cached linear probe."""
        if "train" in self.feature_cache:
            from torch.utils.data import DataLoader

            from trainer.data import CachedFeatures

            ds = CachedFeatures(self.feature_cache["train"], self.loaders.train.dataset.images)
            return DataLoader(ds, batch_size=self.loaders.batch_size, sampler=self.loaders.sampler,
                              drop_last=self.loaders.train.drop_last)
        return self.loaders.train

    def fit(self) -> dict[str, Any]:
        """Train up to ``trainer.epochs``, evaluating and checkpointing every epoch."""
        wall_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.epoch >= self.epochs:
            log.info("nothing to do: this run already has %d of trainer.epochs=%d epochs "
                     "(raise trainer.epochs to train longer)", self.epoch, self.epochs)
            summary = json.loads((self.run_dir / "metrics.json").read_text()) \
                if (self.run_dir / "metrics.json").is_file() else self._write_metrics(0.0)
            self._print_summary(summary)
            return summary
        restore = self._catch_stop_signals()
        try:
            for epoch in range(self.epoch, self.epochs):
                if self._agreed_stop(True):  # arrived during evaluation: last.pt is this boundary
                    raise RunInterrupted(self._stop_signal, self)
                if stage_index(self.stages, epoch) != self.stage_idx:
                    self._enter_stage(stage_index(self.stages, epoch))
                t0 = time.perf_counter()
                train_loss = self.train_one_epoch(epoch)
                val = self.evaluate()
                self.elapsed += time.perf_counter() - t0
                self._end_epoch(epoch, train_loss, val, time.perf_counter() - t0, wall_start)
                failpoint("epoch")
            self.finished = True  # the last _end_epoch saved this state already
            self._write_hparams()
            summary = self._write_metrics(time.perf_counter() - wall_start)
        finally:
            restore()
            if self._writer is not None:
                self._writer.close()
        self._print_summary(summary)
        return summary

    def _catch_stop_signals(self) -> Any:
        """SIGTERM / Ctrl-C: finish the current optimizer step, save last.pt, stop. A second one stops at once."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: Any) -> None:
            if self._stop_signal is not None:  # asked twice: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning("%s received: stopping after this step and saving a checkpoint (again to stop at once)",
                        signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(sig, h) for sig, h in previous.items()]

    def _closure_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One L-BFGS step: it re-evaluates the loss (forward + backward) as its line search needs."""
        opt = self.optimizer

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.loss_fn(self._forward(x), y)
            loss.backward()
            return loss

        return opt.step(closure)

    def train_one_epoch(self, epoch: int) -> float:
        model, opt = self.model, self.optimizer
        if self.probe and self.cache_features and not self.feature_cache:
            self._build_feature_cache()  # counted in this epoch's time
        model.train(not self.head_only)  # frozen BatchNorm layers ignore this
        self.head.train()
        self.loaders.sampler.set_epoch(epoch, start=self.batch_in_epoch * self.loaders.batch_size)
        loader = self._on_device(self._train_batches())
        n_batches = self.batches_per_epoch
        # Running sums stay on the device: reading them is a host-device sync, done every log_every steps.
        epoch_sum = torch.tensor(self.partial_loss[0], device=self.device)
        epoch_count = self.partial_loss[1]
        window = torch.zeros((), device=self.device)
        window_count = 0
        bar = _progress(total=n_batches * self.loaders.batch_size, initial=self.batch_in_epoch * self.loaders.batch_size,
                        desc=f"epoch {epoch + 1}/{self.epochs}")
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, batch in enumerate(loader, start=self.batch_in_epoch):
            x, y = batch[0], batch[1]
            if len(batch) > 2 and batch[2]:
                self._note_bad_images(batch[2])
                if x.shape[0] == 0:
                    bar.update(len(batch[2]))
                    continue
            if not self.images_logged and x.ndim == 4:
                self._log_images(x)
            try:
                if self.closure_step:
                    loss = self._closure_step(x, y)  # forward, backward and the update, as often as it needs
                else:
                    with self.autocast():
                        out = self._forward(x)
                        loss = self.loss_fn(out, y)
                    if self.skip_nonfinite and not bool(torch.isfinite(loss)):  # a sync, only in skip mode
                        self.skipped_steps += 1
                        log.warning("non-finite loss at step %d (epoch %d): batch skipped (%d so far)",
                                    self.global_step + 1, epoch + 1, self.skipped_steps)
                        opt.zero_grad(set_to_none=True)
                        bar.update(x.shape[0])
                        continue
                    self.scaler.scale(loss / self.accumulate).backward()
            except torch.OutOfMemoryError:
                raise UserError(
                    f"out of memory on {self.device} at data.batch_size={self.loaders.batch_size} "
                    f"(precision {self.precision}). Lower data.batch_size (e.g. {max(1, self.loaders.batch_size // 2)}) "
                    f"and keep the effective batch with trainer.accumulate={2 * self.accumulate}, or use "
                    "trainer.precision=bf16 (or fp16) to halve activation memory.") from None
            window += loss.detach()
            window_count += 1
            if (i + 1) % self.accumulate == 0 or i + 1 == n_batches:
                scale = None
                if not self.closure_step:
                    if self.clip_grad_norm is not None:
                        self.scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
                    scale = self.scaler.get_scale() if self.scaler.is_enabled() else None  # fp16 only: a sync
                    self.scaler.step(opt)
                    self.scaler.update()
                    opt.zero_grad(set_to_none=True)
                # fp16: a step the scaler skipped (inf/NaN gradients) does not advance the schedule
                if scale is None or self.scaler.get_scale() >= scale:
                    self.scheduler.after_step()
                self.global_step += 1
                self.batch_in_epoch = i + 1
                if self.global_step % self.log_every == 0 or i + 1 == n_batches:
                    mean = (window / max(1, window_count)).item()  # the one sync, every log_every steps
                    self._check_finite(mean, epoch)
                    epoch_sum += window
                    epoch_count += window_count
                    window.zero_()
                    window_count = 0
                    self.writer.add_scalar("train/loss", mean, self.global_step)
                    for part, lr in self._lrs().items():
                        self.writer.add_scalar(f"lr/{part}", lr, self.global_step)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self._lrs().get('head', 0.0):.2e}", refresh=False)
                stop = i + 1 < n_batches and self._agreed_stop(self.global_step % self.log_every == 0)
                if stop or (self.every_n_steps and self.global_step % self.every_n_steps == 0 and i + 1 < n_batches):
                    epoch_sum += window
                    epoch_count += window_count
                    window.zero_()
                    window_count = 0
                    self.partial_loss = (float(epoch_sum.item()), epoch_count)
                    self._check_finite(self.partial_loss[0], epoch)  # never save a broken state
                    self.save()
                    if stop:
                        bar.close()
                        raise RunInterrupted(self._stop_signal, self)
                failpoint("step")
            bar.update(x.shape[0])
        bar.close()
        self.batch_in_epoch = 0
        self.partial_loss = (0.0, 0)
        total = dist.all_sum(torch.stack([epoch_sum.float(), torch.tensor(float(epoch_count), device=self.device)]))
        return float(total[0].item()) / max(1.0, float(total[1].item()))

    def _agreed_stop(self, check_point: bool) -> bool:
        """Whether to stop for a signal. Distributed: every rank decides together, at check points
        (every trainer.log_every steps and epoch boundaries), so all of them save and stop alike."""
        if not self.distributed:
            return self._stop_signal is not None
        if not check_point:
            return False
        import signal

        if dist.any_rank(self._stop_signal is not None, self.device):
            self._stop_signal = self._stop_signal or signal.SIGTERM
            return True
        return False

    def _note_bad_images(self, problems: list[str]) -> None:
        """Warn once per broken image; stop when more than data.max_bad_fraction of the data is broken."""
        for problem in problems:
            if problem not in self.bad_images:
                self.bad_images.add(problem)
                log.warning("skipping an image that cannot be read: %s", problem)
        total = len(self.loaders.train.dataset) + len(self.loaders.val.dataset)
        if len(self.bad_images) > self.max_bad_fraction * total:
            raise UserError(f"{len(self.bad_images)} of {total} images cannot be read, more than "
                            f"data.max_bad_fraction={self.max_bad_fraction:g}; e.g. {sorted(self.bad_images)[0]}. "
                            "Fix or remove them (data.verify=true lists every one before training), or raise "
                            "data.max_bad_fraction.")

    def _check_finite(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            raise UserError(f"the training loss became {value} at step {self.global_step} (epoch {epoch + 1}); "
                            "stopped without saving, so the last checkpoint is the last good state. Lower "
                            "optimizer.lr, set trainer.clip_grad_norm=1.0, use trainer.precision=fp32, or "
                            "trainer.nonfinite=skip to skip such batches.")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and the task's metrics over the val split; per-class values and the confusion matrix
        are kept in ``self.last_eval`` for logging."""
        from trainer.metrics import Metrics

        self.model.eval()
        metrics = Metrics(self.task, len(self.classes), self.device, self.ignore_index)
        loss_sum = torch.zeros((), device=self.device)
        total = 0
        batches: Any = self.loaders.val
        if "val" in self.feature_cache:
            images = self.loaders.val.dataset.images
            targets = [images.target(i) for i in range(len(images))]
            size = self.loaders.val.batch_size or 1
            batches = [(self.feature_cache["val"][i:i + size], torch.utils.data.default_collate(targets[i:i + size]))
                       for i in range(0, len(targets), size)]
        for batch in self._on_device(batches):
            x, y = batch[0], batch[1]
            if len(batch) > 2 and batch[2]:
                self._note_bad_images(batch[2])
                if x.shape[0] == 0:
                    continue
            with self.autocast():
                out = self.head(x) if x.ndim == 2 else self.model(x)  # cached features, or images
            loss_sum += self.loss_fn(out.float(), y) * y.shape[0]
            metrics.update(out, y)
            total += y.shape[0]
        scalars, per_class, confusion = metrics.compute()
        self.last_eval = {"per_class": per_class, "confusion": confusion}
        sums = dist.all_sum(torch.stack([loss_sum.float(), torch.tensor(float(total), device=self.device)]))
        return {"val/loss": float(sums[0].item()) / max(1.0, float(sums[1].item())), **scalars}

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _end_epoch(self, epoch: int, train_loss: float, val: dict[str, float], seconds: float,
                   wall_start: float) -> None:
        if self.monitor not in val:
            raise UserError(f"checkpoint.monitor={self.monitor!r} is not a metric of this run: use one of "
                            f"{', '.join(val)}.")
        value = val[self.monitor]
        self._check_finite(train_loss, epoch)
        self._check_finite(val["val/loss"], epoch)
        self.scheduler.after_epoch(value)
        row = {"epoch": epoch + 1, "train/loss": train_loss, **val, "lr": self._lrs().get("head", 0.0),
               "seconds": round(seconds, 2)}
        self.history.append(row)
        for k, v in val.items():
            self.writer.add_scalar(k, v, epoch + 1)
        self.writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
        self.epoch = epoch + 1
        improved = self._improved(value)
        self._log_per_class(epoch + 1, improved)
        if improved:
            self.best, self.best_epoch = value, epoch + 1
        self.finished = self.epoch >= self.epochs
        self.save(best=improved)
        self._write_metrics(time.perf_counter() - wall_start)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items())
        log.info("epoch %d/%d  train/loss %.4f  %s  lr %.2e  %.1fs%s", epoch + 1, self.epochs, train_loss, shown,
                 row["lr"], seconds, "  *best*" if improved else "")

    def _log_per_class(self, epoch: int, improved: bool) -> None:
        """Per-class values to TensorBoard and metrics.json; the confusion matrix as an image and a PNG."""
        ev = self.last_eval
        if not ev:
            return
        names = self.classes if self.task != "binary" else [self.classes[1]]
        for metric, values in ev["per_class"].items():
            for name, v in zip(names, values):
                self.writer.add_scalar(f"val_per_class/{metric}/{name}", v, epoch)
        self.per_class_last = {m: dict(zip(names, vals)) for m, vals in ev["per_class"].items()}
        if improved:
            self.per_class_best = self.per_class_last
        if ev["confusion"] is not None:
            from trainer.metrics import confusion_matrix_image

            img = confusion_matrix_image(ev["confusion"], self.classes)
            import numpy as np

            self.writer.add_image("val/confusion_matrix", np.asarray(img), epoch, dataformats="HWC")
            if improved and self.main:
                tmp = self.run_dir / "confusion_matrix.tmp.png"
                img.save(tmp)
                tmp.replace(self.run_dir / "confusion_matrix.png")

    def _print_summary(self, summary: dict[str, Any]) -> None:
        if not self.main:
            return
        best = "n/a" if self.best is None else f"{self.best:.4f}"
        log.info("done: best %s %s at epoch %s | training time %s (this session %s)", self.monitor, best,
                 self.best_epoch, _fmt_time(self.elapsed), _fmt_time(summary["wall_time_s"]))
        log.info("run folder: %s", self.run_dir)
        log.info("best checkpoint: %s", summary["best_checkpoint"])


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C: the run saved its state and stopped; ``train resume=...`` continues it."""

    def __init__(self, signum: int, run: Run) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {run.epoch + 1}, step "
                         f"{run.global_step}; state saved in {run.run_dir / 'checkpoints' / 'last.pt'}. "
                         f"Continue with: train resume={run.run_dir}")


class _NullWriter:
    """TensorBoard writer of ranks > 0: rank 0 alone writes events."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def _wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> Any:
    """DistributedDataParallel over the parameters that train now (frozen ones are left out)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct layers

        # in place below the top module: SyncBatchNorm layers replace the BatchNorm ones, keeping their state
        convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _progress(**kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(unit="img", unit_scale=True, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty(), **kwargs)


# ---------------------------------------------------------------------- building

def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Schedule:
    """The configured scheduler over ``epochs`` of ``steps_per_epoch`` steps, with its interval and warm-up.

    Run-time values (total_steps, steps_per_epoch, epochs, warmup_epochs) go to the scheduler's builder
    when its signature names them. ``scheduler.warmup_epochs`` puts a linear warm-up in front of any
    scheduler that does not take it itself; the scheduler's own length then excludes the warm-up.
    """
    from hydra.utils import get_object, instantiate

    sched = OmegaConf.to_container(cfg.scheduler, resolve=True)
    assert isinstance(sched, dict)
    interval = str(sched.get("interval", "step"))
    if interval not in INTERVALS:
        raise UserError(f"scheduler.interval={interval!r}: use step (after every optimizer step) or epoch.")
    warmup_epochs = float(sched.get("warmup_epochs") or 0.0)
    for k in SCHEDULER_KEYS:
        sched.pop(k, None)
    if sched.get("mode") == "auto":  # plateau follows checkpoint.mode
        sched["mode"] = resolve_monitor(cfg, "multiclass")[1]
    target = get_object(sched["_target_"])
    takes_warmup = "warmup_epochs" in runtime_kwargs(target, {"warmup_epochs": 0})
    total = steps_per_epoch * epochs
    warmup_steps = 0 if takes_warmup else min(total, int(round(warmup_epochs * steps_per_epoch)))
    runtime = runtime_kwargs(target, {"total_steps": max(1, total - warmup_steps), "steps_per_epoch": steps_per_epoch,
                                      "epochs": epochs, "warmup_epochs": warmup_epochs})
    from hydra.errors import InstantiationException

    try:
        scheduler = instantiate(sched, optimizer=optimizer, **runtime)
    except (TypeError, ValueError, InstantiationException) as e:
        msg = str(e.__cause__ or e).splitlines()[0]
        raise UserError(f"scheduler {sched['_target_']}: {msg}. Check the scheduler.* keys "
                        "(train --cfg job shows them).") from None
    if is_metric_scheduler(scheduler):
        interval = "metric"
    return Schedule(scheduler, interval, optimizer, warmup_steps)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, groups: list[dict[str, Any]],
                    device: torch.device) -> torch.optim.Optimizer:
    """The configured optimizer over ``groups``.

    ``optimizer.fused``: auto uses torch's fused kernels on CUDA where the optimizer has them (else
    torch's default, foreach on CUDA). L-BFGS takes one parameter group (no per-group lr or decay).
    SparseAdam needs sparse gradients, which image backbones never produce: refused with the fix.
    """
    from hydra.utils import get_object, instantiate

    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(opt_cfg, dict)
    fused = opt_cfg.get("fused", "auto")
    args = {k: v for k, v in opt_cfg.items() if k not in OPTIMIZER_KEYS}
    target = get_object(args["_target_"])
    if target is torch.optim.SparseAdam:
        sparse = [n for n, m in model.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse]
        if not sparse:
            raise UserError("optimizer=sparse_adam updates only parameters with sparse gradients "
                            "(nn.Embedding(sparse=True)); this model's gradients are all dense, so it would "
                            "train nothing. Use optimizer=adam or optimizer=adamw.")
    if target is torch.optim.LBFGS:
        trainable = [p for g in groups for p in g["params"]]
        if len({g["lr"] for g in groups}) > 1 or any(g["weight_decay"] for g in groups):
            log.warning("optimizer=lbfgs takes one parameter group: one lr (%g) for all layers, no weight decay "
                        "(backbone_lr_mult / layer_decay do not apply)", max(g["lr"] for g in groups))
        groups = [{"params": trainable, "lr": max(g["lr"] for g in groups), "name": "all", "label": "head",
                   "weight_decay": 0.0}]
    if fused in ("auto", True) and "fused" in runtime_kwargs(target, {"fused": True}):
        on_cuda = device.type == "cuda"
        if fused is True or on_cuda:
            args["fused"] = True
    from hydra.errors import InstantiationException

    try:
        return instantiate(args)(groups)
    except (TypeError, ValueError, RuntimeError, InstantiationException) as e:
        msg = str(e.__cause__ or e).splitlines()[0]
        raise UserError(f"optimizer {args['_target_']}: {msg}. Check the optimizer.* keys "
                        "(train --cfg job shows them).") from None


def resolve_monitor(cfg: DictConfig, task: str) -> tuple[str, str]:
    """checkpoint.monitor / mode; ``auto`` picks the task's main metric (val/acc, val/mAP, val/mIoU)."""
    from trainer.metrics import DEFAULT_MONITOR

    monitor = str(cfg.checkpoint.get("monitor", "auto"))
    monitor = DEFAULT_MONITOR[task] if monitor == "auto" else monitor
    mode = str(cfg.checkpoint.get("mode", "auto"))
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    return monitor, mode


def _verify_data(splits: Any, max_bad_fraction: float) -> None:
    """data.verify=true: decode every image first and list every problem."""
    from trainer.data import verify_images

    t0 = time.perf_counter()
    problems = verify_images(splits.train) + verify_images(splits.val)
    total = len(splits.train) + len(splits.val)
    for p in problems:
        log.warning("data.verify: %s", p)
    log.info("data.verify: %d images decoded in %.1fs, %d cannot be read", total, time.perf_counter() - t0,
             len(problems))
    if len(problems) > max_bad_fraction * total:
        raise UserError(f"data.verify: {len(problems)} of {total} images cannot be read (listed above), more than "
                        f"data.max_bad_fraction={max_bad_fraction:g}. Fix or remove them, or raise "
                        "data.max_bad_fraction to train without them.")


def _instantiate(node: Any) -> Any:
    """hydra.utils.instantiate, with our own builders' UserErrors passed through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def check_distributed(cfg: DictConfig, device: torch.device) -> None:
    """Settings that cannot work in lock-step over processes, refused with the alternative."""
    bad = []
    if cfg.trainer.get("sync_bn") and device.type != "cuda":
        bad.append("trainer.sync_bn=true on a CPU (SyncBatchNorm runs on GPUs only)")
    if str(cfg.trainer.get("nonfinite")) == "skip":
        bad.append("trainer.nonfinite=skip (a rank that skips a batch would leave the others waiting)")
    if str(cfg.optimizer.get("_target_", "")).endswith("LBFGS"):
        bad.append("optimizer=lbfgs (its line search runs a different number of steps on each rank)")
    if cfg.model.get("cache_features"):
        bad.append("model.cache_features=true (a single-process linear probe)")
    if bad:
        raise UserError("distributed training does not combine with " + "; ".join(bad) + ". Drop them, or train "
                        "in one process.")


def check_task_fit(cfg: DictConfig, task: str, num_classes: int) -> None:
    """Refuse, before anything is built, a metric or optimizer setting that cannot serve this run."""
    from trainer.metrics import metric_names

    monitor, _ = resolve_monitor(cfg, task)
    names = metric_names(task, num_classes)
    if monitor not in names:
        extra = " (val/top5 needs more than 5 classes)" if monitor == "val/top5" else ""
        raise UserError(f"checkpoint.monitor={monitor} is not a metric of a {task} task{extra}: use one of "
                        f"{', '.join(names)} (or auto).")
    opt = str(cfg.optimizer.get("_target_", ""))
    if opt.endswith("LBFGS"):
        bad = [k for k, on in (("trainer.accumulate>1", int(cfg.trainer.accumulate) > 1),
                               ("trainer.precision=fp16", str(cfg.trainer.precision) == "fp16"),
                               ("trainer.clip_grad_norm", cfg.trainer.get("clip_grad_norm") is not None),
                               ("trainer.nonfinite=skip", str(cfg.trainer.get("nonfinite")) == "skip")) if on]
        if bad:
            raise UserError(f"optimizer=lbfgs re-evaluates the loss inside its own step, so it does not combine "
                            f"with {', '.join(bad)}: drop {'it' if len(bad) == 1 else 'them'}, or use another optimizer.")


def build_run(cfg: DictConfig, run_dir: str | Path | None = None) -> Run:
    """seed -> data -> model -> loaders -> loss -> optimizer -> scheduler -> (resume)."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    from trainer.checkpoint import check_targets

    # every object the config names must come from an allow-listed package (resume brings configs from files)
    check_targets(cfg, extra=tuple(cfg.get("allow_targets") or ()))
    validate_config(cfg)  # types and ranges, for every caller (CLI, scripts, tests)
    device = resolve_device(str(cfg.trainer.device))
    if dist.is_distributed():
        check_distributed(cfg, device)
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank())
        dist.init(device.type == "cuda")
        if not dist.is_main():
            logging.getLogger("trainer").setLevel(logging.WARNING)
        log.info("distributed: %d processes (%s), this is rank %d; data.batch_size=%d per process",
                 dist.world_size(), "nccl" if device.type == "cuda" else "gloo", dist.rank(), int(cfg.data.batch_size))
    # each rank its own random streams (dropout, augmentation draws); DDP copies rank 0's weights
    seed_everything(int(cfg.seed) + dist.rank())
    precision = resolve_precision(str(cfg.trainer.precision), device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    log.info("building data %s", cfg.data.name)
    splits = _instantiate(cfg.data.dataset)
    task = splits.task
    if cfg.data.get("task") not in (None, task):
        raise UserError(f"data.task={cfg.data.task}, but data={cfg.data.name} gives {task} data: leave data.task "
                        f"as the data option sets it, or pick a data option for {cfg.data.task}.")
    if cfg.data.get("verify"):
        _verify_data(splits, float(cfg.data.get("max_bad_fraction", 0.01) or 0.0))
    log.info("building model %s (%s, pretrained=%s, weights=%s) with a %d-class head", cfg.model.name,
             cfg.model.source, cfg.model.pretrained, cfg.model.get("weights"), len(splits.classes))
    if task == "segmentation" and cfg.model.get("cache_features"):
        raise UserError("model.cache_features=true is for classifiers (a linear probe); a segmentation decoder "
                        "trains on feature maps of augmented images: set model.cache_features=false.")
    check_task_fit(cfg, task, len(splits.classes))
    built = build_model(cfg.model, num_classes=len(splits.classes), task=task)
    loaders = build_loaders(cfg.data, splits, built.data_config, int(cfg.seed), on_gpu=device.type == "cuda",
                            rank=dist.rank(), world_size=dist.world_size())
    from trainer.losses import OPTIONS_BY_TASK, configure_loss, loss_fits

    loss_target = str(cfg.loss.get("_target_", ""))

    def refuse_loss(why: str) -> None:
        raise UserError(f"loss {loss_target} cannot train a {task} task: {why}. For {task} use one of: "
                        f"loss={OPTIONS_BY_TASK[task].replace(', ', ', loss=')}.")

    why = loss_fits(None, loss_target, task)  # torch's own losses are judged by name, before they are built
    if why:
        refuse_loss(why)
    loss_fn = _instantiate(cfg.loss)
    why = loss_fits(loss_fn, loss_target, task)  # ours and a user's by their `tasks` attribute
    if why:
        refuse_loss(why)
    configure_loss(loss_fn, task, cfg.data.get("ignore_index"))
    log.info("task %s; loss %s; device %s, precision %s", task, type(loss_fn).__name__, device, precision)
    run = Run(cfg=cfg, built=built, loaders=loaders, classes=splits.classes, loss_fn=loss_fn, device=device,
              precision=precision, run_dir=Path(run_dir), task=task)
    if cfg.get("resume"):
        if str(cfg.resume) == "auto":
            raise UserError("resume=auto chooses one run to continue: it does not combine with -m (multirun).")
        run.resume_from(cfg.resume)
    else:
        run._enter_stage(0)
    return run
