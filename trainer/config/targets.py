"""What a config's ``_target_`` may build: parts of a training run, nothing that loads, writes or runs code.

A config can arrive from a file someone else wrote (a shared run folder's stored overrides, a
checkpoint's embedded config), so naming a package is not enough: ``torch.load`` or
``torch.hub.load`` live under ``torch.`` and run code. A target is built only when it is

- a class under torch.nn / torch.optim / torchvision.models / torchvision.ops / torchvision.transforms
  / timm.models / timm.layers / timm.loss / trainer that is a module (layer, loss, model), an optimizer,
  a learning-rate schedule or a torchvision transform; or
- one of this project's own factory functions or classes (the loggers' sinks), marked with
  :func:`buildable`; or
- under a package the user listed in ``allow_targets`` (that code is trusted as it stands).

Anything else is refused before anything is imported from outside those packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from trainer.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

# packages whose classes may be built when they are one of the kinds in _allowed_bases()
CLASS_MODULES = (
    "torch.nn.",
    "torch.optim.",
    "torchvision.models.",
    "torchvision.ops.",
    "torchvision.transforms.",
    "timm.models.",
    "timm.layers.",
    "timm.loss.",
    "trainer.",
)
PACKAGES = ("torch.", "torchvision.", "timm.", "trainer.")
# our builders that moved between modules: a config stored in an older checkpoint still names them the old way
MOVED = {"trainer.schedules.": "trainer.loop.schedules.", "trainer.sweep.": "trainer.sweeps.summary."}
_MARK = "__trainer_buildable__"


def buildable(fn: F) -> F:
    """Mark one of our factory functions (or classes) as something a config may name as ``_target_``."""
    setattr(fn, _MARK, True)
    return fn


def _allowed_bases() -> tuple[type, ...]:
    import torch
    from torchvision.transforms import v2

    return (
        torch.nn.Module,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        v2.Transform,
    )


def locate(path: str) -> Any:
    """The object ``a.b.C`` names: the longest importable module prefix, then attributes (an old name of
    one of our builders, see ``MOVED``, names the builder where it lives now)."""
    for old, new in MOVED.items():
        if path.startswith(old):
            path = new + path[len(old) :]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def _v1_transform(obj: type) -> bool:
    """A class of torchvision's first transforms API (plain callables over PIL images/tensors)."""
    return obj.__module__ == "torchvision.transforms.transforms"


def why_refused(target: Any, extra: tuple[str, ...] = ()) -> str | None:
    """None when ``target`` may be built, else the reason in a few words."""
    if not isinstance(target, str) or not target or "${" in target:
        return "a _target_ must be a plain dotted name"
    if extra and target.startswith(extra):
        return None  # the user's own packages: trusted by listing them
    if not target.startswith(PACKAGES):
        return "it is not under torch., torchvision., timm. or trainer. nor in allow_targets"
    if any(not part or part.startswith("_") for part in target.split(".")):
        return "private and __main__ modules are never imported"
    obj = locate(target)
    if obj is None:
        return "no such class or function"
    if isinstance(obj, type):
        module = f"{obj.__module__}."
        if module.startswith(CLASS_MODULES) and (issubclass(obj, _allowed_bases()) or _v1_transform(obj)):
            return None
        if module.startswith("trainer.") and obj.__dict__.get(_MARK, False):
            return None  # one of our own marked classes (the loggers' sinks)
        return "it is not a model, layer, loss, optimizer, schedule or transform class"
    if getattr(obj, _MARK, False) and getattr(obj, "__module__", "").startswith("trainer."):
        return None
    return "functions are refused unless they are one of this tool's builders (loaders and file writers never are)"


def check_targets(cfg: Any, extra: tuple[str, ...] = (), where: str = "config") -> None:
    """Refuse a config that names anything :func:`why_refused` refuses, anywhere (nested, in lists, in ``_args_``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    extra = tuple(str(p) for p in extra if str(p))
    if isinstance(cfg, str):
        cfg = OmegaConf.create(cfg)
    if isinstance(cfg, (DictConfig, ListConfig)):
        try:  # the values as they will be built: an interpolation may name the target
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception:
            cfg = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_":
                    why = why_refused(v, extra)
                    if why is not None:
                        own = str(v).split(".")[0] if isinstance(v, str) else "my_pkg"
                        raise UserError(
                            f"{where}: {path}_target_={v!r} is not allowed to be built: {why}. A config may "
                            "build models, layers, losses, optimizers, schedules, transforms and this tool's "
                            "data builders, never loaders, hub functions or anything that runs or writes "
                            "files. If it is your own code and you trust it, give its package on the command "
                            f"line: 'allow_targets=[{own}.]'."
                        )
                walk(v, f"{path}{k}.")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}{i}.")

    walk(cfg, "")


def instantiate_node(node: Any, **runtime: Any) -> Any:
    """hydra.utils.instantiate, with our own builders' UserErrors passed through unwrapped and other
    failures named by their ``_target_`` (one paragraph, exit 2)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **runtime)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        msg = str(e.__cause__ or e).splitlines()[0]
        raise UserError(
            f"{node.get('_target_')}: {msg}. Check its keys (train --cfg job prints the resolved config)."
        ) from None
