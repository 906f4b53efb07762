"""Which run ``resume=`` continues, read before Hydra: ``resume=auto`` finds the newest unfinished run of
this config under outputs/ (a run folder's config.yaml read as untrusted: bounded, no aliases), and
``resume=PATH`` takes that run's stored overrides, less what only the command line may set."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.config.overrides import is_override, key_of, quote, value_of
from trainer.config.schema import compose_config
from trainer.errors import UserError

OUTPUTS = Path("outputs")


def _comparable(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("resume", None)
    plain.pop("hydra", None)
    return plain


def find_unfinished_run(overrides: list[str], outputs: Path = OUTPUTS) -> Path | None:
    """Newest run under ``outputs`` with a last.pt, not finished, whose config equals this one."""
    from trainer.config.untrusted import read_config
    from trainer.runs.checkpoint import is_finished

    wanted = _comparable(compose_config(overrides))
    candidates = []
    for last in outputs.glob("**/checkpoints/last.pt"):
        run_dir = last.parent.parent
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.is_file() or is_finished(run_dir):
            continue
        try:
            if _comparable(read_config(saved)) == wanted:
                candidates.append((last.stat().st_mtime, last))
        except UserError as e:  # too large, an alias bomb, not YAML: skipped, never a hang
            print(f"resume=auto: skipping {run_dir}: {e}", file=sys.stderr)
        except Exception:  # a foreign or broken config.yaml is simply not a match
            continue
    return max(candidates)[1] if candidates else None


def trusted_overrides(stored: object, source: Path) -> list[str]:
    """A run folder's stored overrides, less what may not come from a file someone else could have
    written: Hydra's own settings (callbacks, search path, launcher) and ``allow_targets``, which only
    the command line grants. Every ``_target_`` in the rest is checked when the run is built."""
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise UserError(f"{source} is not a list of overrides (key=value strings); resume from a checkpoint file.")
    kept = []
    for o in stored:
        key = key_of(o)
        if key.startswith("hydra") or key in ("allow_targets", "resume_on_changed_data"):
            print(
                f"resume: not taking {o!r} from {source} (only the command line may set it; "
                "give it again there if you trust it)",
                file=sys.stderr,
            )
            continue
        kept.append(o)
    return kept


def resolve_resume(argv: list[str]) -> list[str]:
    """Turn ``resume=auto|PATH`` into the checkpoint to load and that run's own folder.

    The resumed run keeps its folder (TensorBoard log, checkpoints, train.log) and, for a
    path, the overrides it was started with; overrides given now are applied on top.
    """
    if any(a in ("-m", "--multirun") for a in argv):
        return argv
    at = [i for i, a in enumerate(argv) if is_override(a) and key_of(a) == "resume"]
    if not at:
        return argv
    value = value_of(argv[at[-1]])
    rest = [a for i, a in enumerate(argv) if i not in at]
    if value in ("", "null", "None", "none"):
        return argv
    from trainer.runs.checkpoint import checkpoint_of, run_dir_of

    overrides = [a for a in rest if is_override(a)]
    flags = [a for a in rest if not is_override(a)]
    if value == "auto":
        try:
            ckpt = find_unfinished_run(overrides)
        except Exception:
            return rest + ["resume=null"]  # a bad override: let Hydra report it the usual way
        if ckpt is None:
            print(
                f"resume=auto: no unfinished run with this config under {OUTPUTS}/; starting a new run.",
                file=sys.stderr,
            )
            return rest + ["resume=null"]
        from trainer.runs.checkpoint import newest_valid_checkpoint

        valid, problems = newest_valid_checkpoint(run_dir_of(ckpt))
        for problem in problems:
            print(f"resume=auto: skipping {problem}", file=sys.stderr)
        if valid is None:
            raise UserError(
                f"resume=auto: run {run_dir_of(ckpt)} has no readable checkpoint left; start a new "
                "run (without resume) or resume=<another checkpoint>."
            )
        if valid != ckpt:
            print(f"resume=auto: falling back to the newest valid checkpoint, {valid}", file=sys.stderr)
        ckpt = valid
        merged = overrides
    else:
        ckpt = checkpoint_of(value)
        from trainer.config.untrusted import read_yaml

        saved = run_dir_of(ckpt) / ".hydra" / "overrides.yaml"
        old = read_yaml(saved) if saved.is_file() else []
        new_keys = {key_of(o) for o in overrides}
        merged = [o for o in trusted_overrides(old, saved) if key_of(o) not in new_keys | {"resume"}] + overrides
    run_dir = run_dir_of(ckpt).resolve()
    print(f"resuming {ckpt} in {run_dir}", file=sys.stderr)
    return flags + merged + [f"resume={quote(str(ckpt.resolve()))}", f"hydra.run.dir={quote(str(run_dir))}"]
