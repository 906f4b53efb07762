"""Knowledge distillation (``distill.teacher``): the student learns from a teacher's soft targets and
the labels, ``(1 - alpha) * loss(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.; the T^2 keeps the soft term's gradients on the scale of the hard one).

The teacher is one of our checkpoints (a run folder or a .pt, trained on the same classes) or a timm
model name whose pretrained head already has the student's classes. It runs in eval mode under
no_grad, in the run's precision, on the student's batch re-normalized (and resized) to its own input.
Evaluation scores the student alone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from trainer.config.tasks import task_named
from trainer.errors import UserError

log = logging.getLogger("trainer")


class NoTeacher:
    enabled = False

    def see(self, x: torch.Tensor) -> None:
        pass

    def wrap(self, loss_fn: Any) -> Any:
        return loss_fn


class Teacher(NoTeacher):
    enabled = True

    def __init__(
        self,
        model: torch.nn.Module,
        spec: dict[str, Any],
        student_spec: dict[str, Any],
        alpha: float,
        temperature: float,
        autocast: Any,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.alpha, self.t, self.autocast = float(alpha), float(temperature), autocast
        device = next(model.parameters()).device

        def stats(s: dict[str, Any], key: str) -> torch.Tensor:
            return torch.tensor(s[key], device=device).view(1, -1, 1, 1)

        # student-normalized -> raw [0, 1] -> teacher-normalized
        self.scale = stats(student_spec, "std") / stats(spec, "std")
        self.shift = (stats(student_spec, "mean") - stats(spec, "mean")) / stats(spec, "std")
        self.size = int(spec["size"])
        self.same_input = bool((self.scale == 1).all() and (self.shift == 0).all())  # nothing to convert per batch
        self.logits: torch.Tensor | None = None

    @torch.no_grad()
    def see(self, x: torch.Tensor) -> None:
        """The teacher's logits for this training batch (kept for the loss that follows)."""
        if not self.same_input:
            x = x * self.scale + self.shift
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        with self.autocast():
            self.logits = self.model(x).float()

    def wrap(self, loss_fn: Any) -> Any:
        def distilled(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            hard = loss_fn(out, y)
            if self.logits is None:
                return hard
            t = self.t
            soft = F.kl_div(
                F.log_softmax(out.float() / t, dim=1),
                F.log_softmax(self.logits / t, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            return (1 - self.alpha) * hard + self.alpha * t * t * soft

        return distilled


def build_teacher(
    source: str | None,
    alpha: float,
    temperature: float,
    allow: tuple[str, ...],
    splits: Any,
    device: torch.device,
    student_spec: dict[str, Any],
    autocast: Any,
) -> NoTeacher:
    """``distill.teacher`` (a checkpoint, a run folder or a timm name) for the student's data; NoTeacher without one."""
    if not source:
        return NoTeacher()
    if not task_named(splits.task).soft_labels:
        raise UserError(
            f"distill.teacher: distillation matches softmax outputs, for multiclass tasks only (this is {splits.task})."
        )
    model, spec, where = _load_teacher(str(source), splits.classes, allow)
    model.to(device)
    log.info(
        "distillation from %s (%s params, input %d px): alpha %.2f, temperature %.1f",
        where,
        f"{sum(p.numel() for p in model.parameters()):,}",
        int(spec["size"]),
        alpha,
        temperature,
    )
    return Teacher(model, spec, student_spec, alpha, temperature, autocast)


def _load_teacher(
    source: str, classes: list[str], allow: tuple[str, ...]
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    from pathlib import Path

    if Path(source).expanduser().exists() or source.endswith((".pt", ".pth")):
        from trainer.models.trained import load_trained

        trained = load_trained(str(Path(source).expanduser()), allow)
        if list(trained.classes) != list(classes):
            raise UserError(
                f"distill.teacher={source!r} was trained on classes {trained.classes}; this data has {classes}. "
                "A teacher must know the student's classes."
            )
        return trained.model, trained.input_spec, str(trained.checkpoint)
    import timm

    try:
        model = timm.create_model(source, pretrained=True)
    except Exception as e:  # noqa: BLE001 - unknown name, no network, no cache: the same answer
        raise UserError(
            f"distill.teacher={source!r} is neither a checkpoint nor a timm model that could be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120]}). Give a run folder or .pt of a teacher "
            "trained on these classes."
        ) from None
    if model.num_classes != len(classes):
        raise UserError(
            f"distill.teacher={source!r} predicts {model.num_classes} classes, this data has {len(classes)}: "
            "fine-tune a teacher on these classes first (train model.name=... ), then give its run folder."
        )
    data = timm.data.resolve_data_config({}, model=model)
    spec = {"size": data["input_size"][-1], "mean": data["mean"], "std": data["std"]}
    return model, spec, source
