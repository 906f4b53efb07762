"""The `train` command: Hydra composes the config, the run object does the rest.

Only Hydra and OmegaConf are imported here, so `--help`, `--cfg` and config errors answer
without loading torch or timm.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from trainer.config.overrides import is_override, key_of, value_of
from trainer.config.schema import CONF_DIR
from trainer.errors import Exit, UserError, exit_code_of, fail, run_console_command
from trainer.runs.resume import OUTPUTS, resolve_resume
from trainer.sweeps import job as sweep_job

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


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job: its result (the best monitored value) for Hydra's sweepers; exit codes for the shell. A job
    of a parallel sweep runs in a process of its own (sweep_job.run_isolated): killed, it is recorded."""
    if sweep_job.isolated():
        from hydra.core.hydra_config import HydraConfig

        return sweep_job.run_isolated(lambda: _job(cfg), Path(HydraConfig.get().runtime.output_dir))
    return _job(cfg)


def _job(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainer.distributed import launch
    from trainer.runs.folder import FolderInUse, RunFolder

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = HydraConfig.get().runtime.output_dir
    folder = RunFolder(Path(out_dir), resuming=bool(cfg.get("resume"))) if launch.is_main() else None
    try:
        if folder is not None:
            folder.open(cfg, HydraConfig.get())  # locked; nothing reaches it before the run is accepted
    except FolderInUse as e:
        log.error("error: %s", e)
        folder.discard()
        return None if multirun else sys.exit(Exit.MISTAKE)
    try:
        return _train_job(cfg, multirun, Path(out_dir), folder)
    except UserError as e:
        log.error("error: %s", e)
        if folder is not None:
            folder.settle()  # a refused resume leaves its folder as it was
        if multirun:  # one bad job must not end the sweep; the summary marks it failed
            sweep_job.mark_failed(Path(out_dir), str(e))
            return None  # a search sweeper records a failed trial (a value it cannot read) and goes on
        sys.exit(exit_code_of(e))
    except KeyboardInterrupt as e:
        log.error(
            "interrupted: the last checkpoint is in %s/checkpoints; continue with `train resume=%s`", out_dir, out_dir
        )
        sys.exit(exit_code_of(e))
    except Exception as e:
        from trainer.distributed.collectives import is_peer_failure
        from trainer.loop.interrupt import RunInterrupted

        if launch.is_distributed() and is_peer_failure(e):
            # a peer died (killed, out of memory): torchrun restarts the workers (--max-restarts) or ends the run
            log.error(
                "rank %d: lost contact with another process of this run (%s); the last checkpoint is in %s/checkpoints",
                launch.rank(),
                str(e).splitlines()[0][:160],
                out_dir,
            )
            sys.exit(Exit.UNEXPECTED)
        if folder is not None:
            folder.settle()
        if multirun and not isinstance(e, RunInterrupted):
            return sweep_job.job_crashed(Path(out_dir), e)
        if not isinstance(e, RunInterrupted):
            raise
        log.warning("%s", e)
        sys.exit(exit_code_of(e))
    finally:
        if folder is not None:
            folder.settle()
            folder.release()


def _train_job(cfg: DictConfig, multirun: bool, out_dir: Path, folder: Any) -> Any:
    """``_train``, with a full or read-only disk turned into one paragraph naming what survived."""
    try:
        return _train(cfg, multirun, out_dir, folder)
    except OSError as e:
        from trainer.runs.checkpoint import STORAGE_ERRNOS, storage_error

        if e.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(e, out_dir) from None


def _train(cfg: DictConfig, multirun: bool, out_dir: Path, folder: Any = None) -> Any:
    from omegaconf.errors import MissingMandatoryValue

    from trainer.loop.build import build_run  # torch and timm load here, not before

    changes, share = {}, None
    if multirun and not cfg.get("resume"):
        previous = sweep_job.previous_sweep_job(out_dir, cfg)
        if isinstance(previous, dict):
            log.info(
                "this job already finished in %s (same config): skipping it (best %s)", out_dir, previous.get("best")
            )
            return previous.get("best")
        if previous is not None:
            changes["resume"] = str(previous)  # a re-run sweep carries on the job's own last.pt
    if multirun:
        from hydra.core.hydra_config import HydraConfig

        from trainer.runs import failpoints

        failpoints.job = int(out_dir.name) if out_dir.name.isdigit() else int(HydraConfig.get().job.num)
        share = sweep_job.share_the_machine()
    try:
        from trainer.loop.budget import Clock

        clock = Clock() if multirun else Clock(STARTED[0])  # a sweep's job counts from its own start
        run = build_run(cfg, changes=changes, share=share, clock=clock)
        if folder is not None:
            folder.accept()  # resumed from its checkpoint, or a new run: .hydra/ and the log go in now
        if cfg.get("plan"):
            return _plan_only(run)
        if cfg.get("lr_find"):
            return _lr_find_only(run)
        if (cfg.get("race") or {}).get("pace"):
            return _pace_only(run, clock)
        summary = run.fit()
    except MissingMandatoryValue as e:
        key = str(e.full_key)
        if key.startswith("data.dataset."):  # the dataset's argument comes from the data option's own key
            key = "data." + key.rsplit(".", 1)[-1]
        example = {"data.root": "DIR", "data.csv": "FILE.csv"}.get(key, "...")
        from hydra.core.hydra_config import HydraConfig

        option = HydraConfig.get().runtime.choices.get("data")
        raise UserError(
            f"missing value for {key}: data={option} needs it; give it on the command line, e.g. {key}={example}."
        ) from None
    if multirun:
        sweep_job.release_memory()  # a worker of a parallel sweep runs the next job in the same process
    return summary.get("best")


def _plan_only(run: Any) -> None:
    """plan=true: the plan, a few steps timed, lr.png; no training, nothing saved but the plot."""
    from trainer.loop.estimate import log_plan, measure_and_stop

    log_plan(run)
    for line in measure_and_stop(run):
        log.info(line)
    log.info("plan only (plan=true): nothing was trained; drop plan=true to train")


def _pace_only(run: Any, clock: Any) -> dict[str, float]:
    """race.pace=true: an epoch of this configuration timed (and its start-up, so far), for the race's plan."""
    from trainer.loop.budget import time_epoch

    start_s = clock()
    pace = {**time_epoch(run), "start_s": start_s, "mode": run.settings.mode, "monitor": run.settings.monitor}
    pace["measure_s"] = clock() - start_s
    log.info("race pace: %.1f s an epoch (%.1f s to start)", pace["epoch_s"], start_s)
    return pace


def _lr_find_only(run: Any) -> None:
    """lr_find=true: the range test and its report; then the command that trains with its lr."""
    from hydra.core.hydra_config import HydraConfig

    from trainer.loop.lr_find import find_lr

    lr = find_lr(run)
    kept = [o for o in HydraConfig.get().overrides.task if key_of(o) not in ("lr_find", "optimizer.lr")]
    log.info("train with it:\n  train %s", " ".join([*kept, f"optimizer.lr={lr:.2e}"]))


def check_writable(argv: list[str]) -> None:
    """Refuse at once a run or sweep folder that cannot be written (read-only disk, no permission)."""
    import os

    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [value_of(a) for a in argv if is_override(a) and key_of(a) == key]
    target = Path(given[-1]).expanduser() if given else OUTPUTS
    existing = target.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write the run folder {str(target)!r}: {existing} is read-only or not yours. "
            f"Run from a folder you can write to, or give {key}=<a writable folder>."
        )


def register_race_sweeper() -> None:
    """hydra/sweeper=race: Hydra finds plugins by scanning the hydra_plugins package, which misses one
    installed in editable mode (`pip install -e .`); registered by hand it is found either way."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.trainer_race.race_sweeper import RaceSweeper

    Plugins.instance().register(RaceSweeper)


STARTED = [time.monotonic()]  # when this command started: a time budget counts from here (set again by main)


def main() -> None:
    """The `train` command."""
    STARTED[0] = time.monotonic()  # a process's start-up is a second before
    run_console_command(_main, "interrupted.")  # inside a run, the job's own handler says where its state is


def _main() -> None:
    if not Path(CONF_DIR, "train.yaml").is_file():
        sys.exit(
            f"error: config folder {CONF_DIR} is missing: reinstall the package (`pip install "
            "transfer-trainer`, or `pip install -e .` in a source checkout)."
        )
    logging.raiseExceptions = False  # a log line that cannot be written (full disk) is dropped, not a traceback
    try:
        argv = sys.argv[1:]
        if any(a in ("--help", "-h") for a in argv):
            from trainer.cli.help import help_text
            from trainer.config.overrides import with_config_dirs
            from trainer.config.schema import explain_overrides

            overrides = with_config_dirs([a for a in argv if is_override(a)], argv)
            try:
                text = help_text(overrides)
            except Exception:
                explain_overrides(overrides)  # says what is wrong with them, in one paragraph
                raise
            print(text)
            return
        info = {"--hydra-help", "--info", "-i", "--shell-completion", "-sc"}
        if not any(a in info for a in argv):
            from trainer.config.overrides import normalize_overrides, with_config_dirs
            from trainer.config.schema import explain_overrides

            argv = normalize_overrides(argv)
            multirun = any(a in ("-m", "--multirun") for a in argv)
            explain_overrides(with_config_dirs([a for a in argv if is_override(a)], argv), multirun=multirun)
        argv = resolve_resume(argv)
        check_writable(argv)
        from trainer.distributed import launch

        launch.launch_if_asked(argv)  # trainer.devices=N: hands over to torchrun
        if launch.is_distributed():  # under torchrun: join the group, one run folder for all ranks
            from trainer.distributed.collectives import prepare_argv

            argv = prepare_argv(argv, OUTPUTS)
    except UserError as e:
        fail(e)
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv) and "--resolve" not in argv:
        argv.append("--resolve")  # users want the values a run would use, not ${...} references
    sys.argv = [sys.argv[0]] + argv
    register_race_sweeper()
    try:
        hydra_main()
    finally:
        from trainer.distributed import launch

        launch.shutdown()
    from trainer.sweeps.summary import FAILED_JOBS

    if FAILED_JOBS:  # the summary is written; the exit code tells scripts that not every job finished
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed: {', '.join(FAILED_JOBS)}", file=sys.stderr)
        sys.exit(Exit.JOBS_FAILED)


if __name__ == "__main__":
    main()
