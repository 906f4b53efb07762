"""The `train` command: Hydra composes the config, the run object does the rest.

Only Hydra and OmegaConf are imported here, so `--help`, `--cfg` and config errors answer
without loading torch or timm.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from trainer.config import CONF_DIR, compose_config
from trainer.errors import UserError

OUTPUTS = Path("outputs")
log = logging.getLogger("trainer")


def visible_gpus() -> int:
    """GPUs this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else /dev/nvidia*)."""
    import glob
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in glob.glob("/dev/nvidia[0-9]*")])


def parallel_jobs() -> int:
    """hydra/launcher=parallel: one job per visible GPU, or 2 on a CPU-only machine."""
    return visible_gpus() or 2


OmegaConf.register_new_resolver("parallel_jobs", parallel_jobs, replace=True)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(override: str) -> str:
    return override.split("=", 1)[1].strip().strip("'\"") if "=" in override else ""


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _comparable(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("resume", None)
    plain.pop("hydra", None)
    return plain


def find_unfinished_run(overrides: list[str], outputs: Path = OUTPUTS) -> Path | None:
    """Newest run under ``outputs`` with a last.pt, not finished, whose config equals this one."""
    from trainer.checkpoint import is_finished

    wanted = _comparable(compose_config(overrides))
    candidates = []
    for last in outputs.glob("**/checkpoints/last.pt"):
        run_dir = last.parent.parent
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.is_file() or is_finished(run_dir):
            continue
        try:
            if _comparable(OmegaConf.load(saved)) == wanted:
                candidates.append((last.stat().st_mtime, last))
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
        key = _key(o)
        if key.startswith("hydra") or key == "allow_targets":
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
    at = [i for i, a in enumerate(argv) if _is_override(a) and _key(a) == "resume"]
    if not at:
        return argv
    value = _value(argv[at[-1]])
    rest = [a for i, a in enumerate(argv) if i not in at]
    if value in ("", "null", "None", "none"):
        return argv
    from trainer.checkpoint import checkpoint_of, run_dir_of

    overrides = [a for a in rest if _is_override(a)]
    flags = [a for a in rest if not _is_override(a)]
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
        from trainer.checkpoint import newest_valid_checkpoint

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
        import yaml

        saved = run_dir_of(ckpt) / ".hydra" / "overrides.yaml"
        old = yaml.safe_load(saved.read_text()) if saved.is_file() else []
        new_keys = {_key(o) for o in overrides}
        merged = [o for o in trusted_overrides(old, saved) if _key(o) not in new_keys | {"resume"}] + overrides
    run_dir = run_dir_of(ckpt).resolve()
    print(f"resuming {ckpt} in {run_dir}", file=sys.stderr)
    return flags + merged + [f"resume={_quote(str(ckpt.resolve()))}", f"hydra.run.dir={_quote(str(run_dir))}"]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job: its result (the best monitored value) for Hydra's sweepers; exit codes for the shell."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        return _train(cfg, multirun, Path(out_dir))
    except UserError as e:
        log.error("error: %s", e)
        if multirun:  # one bad job must not end the sweep; the summary marks it failed
            _mark_failed(Path(out_dir), str(e))
            return float("nan")  # a search sweeper records a failed trial and goes on
        sys.exit(2)
    except KeyboardInterrupt:
        log.error(
            "interrupted: the last checkpoint is in %s/checkpoints; continue with `train resume=%s`", out_dir, out_dir
        )
        sys.exit(130)
    except Exception as e:
        from trainer import distributed
        from trainer.interrupt import RunInterrupted

        if distributed.is_distributed() and distributed.is_peer_failure(e):
            # a peer died (killed, out of memory): torchrun restarts the workers (--max-restarts) or ends the run
            log.error(
                "rank %d: lost contact with another process of this run (%s); the last checkpoint is in %s/checkpoints",
                distributed.rank(),
                str(e).splitlines()[0][:160],
                out_dir,
            )
            sys.exit(1)
        if multirun and not isinstance(e, RunInterrupted):
            return _job_crashed(Path(out_dir), e)
        if not isinstance(e, RunInterrupted):
            raise
        log.warning("%s", e)
        sys.exit(e.exit_code)


def _train(cfg: DictConfig, multirun: bool, out_dir: Path) -> float | None:
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    from trainer.build import build_run  # torch and timm load here, not before

    if multirun and not cfg.get("resume"):
        previous = _previous_sweep_job(out_dir, cfg)
        if isinstance(previous, dict):
            log.info(
                "this job already finished in %s (same config): skipping it (best %s)", out_dir, previous.get("best")
            )
            return previous.get("best")
        if previous is not None:
            cfg.resume = str(previous)
    if multirun:
        from hydra.core.hydra_config import HydraConfig

        from trainer import failpoints

        failpoints.job = int(HydraConfig.get().job.num)
        _share_the_machine(cfg)
    try:
        summary = build_run(cfg).fit()
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):  # our own builders' messages pass through as they are
            raise e.__cause__ from None
        raise UserError(
            f"a config option could not be built: {e}. Check its _target_ and keys "
            "(train --cfg job prints the resolved config)."
        ) from None
    except MissingMandatoryValue as e:
        key = str(e.full_key)
        if key.startswith("data.dataset."):  # the dataset's argument comes from the data option's own key
            key = "data." + key.rsplit(".", 1)[-1]
        example = {"data.root": "DIR", "data.csv": "FILE.csv"}.get(key, "...")
        raise UserError(
            f"missing value for {key}: data={cfg.data.get('name')} needs it; give it on the "
            f"command line, e.g. {key}={example}."
        ) from None
    if multirun:
        _release_memory()  # a worker of a parallel sweep runs the next job in the same process
    return summary.get("best")


def _share_the_machine(cfg: DictConfig) -> None:
    """A job of a parallel sweep (joblib launcher): its own GPU (job number modulo the GPUs), or its
    share of the CPU cores, so that parallel jobs do not fight over one device."""
    import os

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower():
        return
    import torch

    n_jobs = int(hc.launcher.get("n_jobs") or 1)
    if n_jobs < 0:  # joblib: -1 = one per core
        n_jobs = os.cpu_count() or 1
    if torch.cuda.is_available() and str(cfg.trainer.device) in ("auto", "cuda"):
        gpu = int(hc.job.num) % torch.cuda.device_count()
        cfg.trainer.device = f"cuda:{gpu}"
        torch.cuda.set_device(gpu)
        log.info("parallel sweep: job %s on cuda:%d", hc.job.num, gpu)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, n_jobs)))
        log.info("parallel sweep: job %s on %d CPU threads", hc.job.num, torch.get_num_threads())


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _previous_sweep_job(job_dir: Path, cfg: DictConfig) -> dict | Path | None:
    """For a re-run sweep: this job's metrics if it finished with the same config, its last.pt if
    it stopped part-way, else None (a new job)."""
    import json

    from trainer.checkpoint import load_checkpoint

    last = job_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    try:
        saved = OmegaConf.create(load_checkpoint(last)["config"])
    except UserError as e:
        log.warning("ignoring %s: %s", last, e)
        return None
    now = OmegaConf.to_container(cfg, resolve=True)
    before = OmegaConf.to_container(saved, resolve=True)
    assert isinstance(now, dict) and isinstance(before, dict)
    now.pop("resume", None)
    before.pop("resume", None)
    if now != before:
        return None
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    return metrics if metrics.get("finished") else last


def _mark_failed(job_dir: Path, error: str, log_file: Path | None = None) -> None:
    import json
    import os

    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "metrics.json"
    try:  # keep the epochs it did finish
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.update(finished=False, status="failed", error=error, log=str(log_file or job_dir / "train.log"))
    record.setdefault("pid", os.getpid())
    path.write_text(json.dumps(record, indent=2))


def _job_crashed(job_dir: Path, e: BaseException) -> float:
    """A sweep job that failed in building, training or evaluating (out of memory included): its
    traceback goes to error.log, one line to the summary, and the sweep goes on."""
    import traceback

    job_dir.mkdir(parents=True, exist_ok=True)
    error_log = job_dir / "error.log"
    error_log.write_text("".join(traceback.format_exception(e)))
    first = (str(e).strip().splitlines() or [""])[0][:200]
    line = f"{type(e).__name__}: {first}" if first else type(e).__name__
    log.error("job failed: %s (traceback in %s); the sweep goes on", line, error_log)
    _mark_failed(job_dir, line, error_log)
    _release_memory()
    return float("nan")


def main() -> None:
    if not Path(CONF_DIR, "train.yaml").is_file():
        sys.exit(
            f"error: config folder {CONF_DIR} is missing: install the project from its source "
            "folder with `pip install -e .`."
        )
    try:
        argv = sys.argv[1:]
        if any(a in ("--help", "-h") for a in argv):
            from trainer.config import explain_overrides
            from trainer.help import help_text

            overrides = [a for a in argv if _is_override(a)]
            try:
                text = help_text(overrides)
            except Exception:
                explain_overrides(overrides)  # says what is wrong with them, in one paragraph
                raise
            print(text)
            return
        info = {"--hydra-help", "--info", "-i", "--shell-completion", "-sc"}
        if not any(a in info for a in argv) and not any(a in ("-m", "--multirun") for a in argv):
            from trainer.config import explain_overrides

            explain_overrides([a for a in argv if _is_override(a)])
        argv = resolve_resume(argv)
        from trainer import distributed

        distributed.launch_if_asked(argv)  # trainer.devices=N: hands over to torchrun
        argv = distributed.prepare_argv(argv, OUTPUTS)  # under torchrun: one run folder for all ranks
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv) and "--resolve" not in argv:
        argv.append("--resolve")  # users want the values a run would use, not ${...} references
    sys.argv = [sys.argv[0]] + argv
    try:
        hydra_main()
    finally:
        from trainer import distributed

        distributed.shutdown()
    from trainer.sweep import FAILED_JOBS

    if FAILED_JOBS:  # the summary is written; the exit code tells scripts that not every job finished
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed: {', '.join(FAILED_JOBS)}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
