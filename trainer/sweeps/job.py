"""One job of a sweep: sharing the machine with parallel jobs, skipping or resuming a job a re-run
finds done or part-done, and recording a failed job so that the others go on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

log = logging.getLogger("trainer")


@dataclass(frozen=True)
class MachineShare:
    """A parallel sweep job's part of the machine: a GPU (when there are GPUs) and CPU threads."""

    job: int
    gpu: int | None
    threads: int


def share_the_machine() -> MachineShare | None:
    """This job's share of the machine under the parallel launcher (joblib): its own GPU (job number
    modulo the GPUs) and its share of the CPU cores, so that parallel jobs do not fight over one
    device; None for one job at a time. ``build_run`` applies it."""
    import os

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower():
        return None
    import torch

    n_jobs = int(hc.launcher.get("n_jobs") or 1)
    if n_jobs < 0:  # joblib: -1 = one per core
        n_jobs = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    job = int(hc.job.num)
    return MachineShare(job, job % gpus if gpus else None, max(1, (os.cpu_count() or 1) // max(1, n_jobs)))


def release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# settings a run resolves when it is built and stores resolved ("auto" -> what it chose), with the keys
# chosen together with them
CHOSEN_AT_BUILD = {
    "trainer.precision": (),
    "trainer.channels_last": (),
    "data.batch_size": ("trainer.accumulate",),
    "optimizer.lr": (),
}


def previous_sweep_job(job_dir: Path, cfg: DictConfig) -> dict | Path | None:
    """For a re-run sweep: this job's metrics if it finished with the same config, its last.pt if
    it stopped part-way, else None (a new job)."""
    import json

    from trainer.config.untrusted import load_config
    from trainer.runs.checkpoint import load_checkpoint

    last = job_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    try:
        saved = load_config(load_checkpoint(last)["config"], f"the config stored in {last}")
    except UserError as e:
        log.warning("ignoring %s: %s", last, e)
        return None
    now = OmegaConf.to_container(cfg, resolve=True)
    before = OmegaConf.to_container(saved, resolve=True)
    assert isinstance(now, dict) and isinstance(before, dict)
    for key, with_it in CHOSEN_AT_BUILD.items():  # "auto" here is what the stored run chose
        if _at(now, key) == "auto":
            for k in (key, *with_it):
                _put(now, k, _at(before, k))
    for key in ("resume", "race"):  # where to resume from; a race's round and clock
        now.pop(key, None)
        before.pop(key, None)
    if now != before:
        return None
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    return metrics if metrics.get("finished") else last


def _at(tree: dict, key: str) -> Any:
    """The value at a dotted ``key`` of a plain nested dict (None where a part is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _put(tree: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[last] = value


def mark_failed(job_dir: Path, error: str, log_file: Path | None = None) -> None:
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
    try:
        path.write_text(json.dumps(record, indent=2))
    except OSError as e:  # a full or read-only disk: the summary lists the job as failed all the same
        log.error("could not record the failure in %s: %s", path, e.strerror)


def job_crashed(job_dir: Path, e: BaseException) -> None:
    """A sweep job that failed in building, training or evaluating (out of memory included): its
    traceback goes to error.log, one line to the summary, and the sweep goes on."""
    import traceback

    job_dir.mkdir(parents=True, exist_ok=True)
    error_log = job_dir / "error.log"
    error_log.write_text("".join(traceback.format_exception(e)))
    first = (str(e).strip().splitlines() or [""])[0][:200]
    line = f"{type(e).__name__}: {first}" if first else type(e).__name__
    log.error("job failed: %s (traceback in %s); the sweep goes on", line, error_log)
    mark_failed(job_dir, line, error_log)
    release_memory()
    return None  # the search sweeper's failed trial


def isolated() -> bool:
    """This job is one of a parallel sweep's (Hydra's joblib launcher): it runs in a child process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "joblib" in str(hc.launcher.get("_target_", "")).lower()


def run_isolated(job: Callable[[], Any], job_dir: Path) -> Any:
    """``job()`` in a forked child of this joblib worker, its result sent back. Inside the worker, a job
    killed from outside (the out-of-memory killer's SIGKILL) would take the worker with it, and joblib
    would then stop the whole sweep; a child's death is recorded as that job's failure instead, and the
    worker, the other jobs and the summary go on. A re-run resumes the job from its last checkpoint."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        receive.close()
        send.send(job())
        send.close()

    process = ctx.Process(target=child, name=f"job {job_dir.name}")
    process.start()
    send.close()
    try:
        return receive.recv()
    except EOFError:  # the child died without an answer
        pass
    finally:
        process.join()
    code = process.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
    error = f"the job's process was {how} (the out-of-memory killer sends SIGKILL); re-run the sweep to resume it"
    log.error("job failed: %s; the sweep goes on", error)
    mark_failed(job_dir, error)
    return None
