"""What both tiers of tests share: where the repository is, a tiny model on generated data, an
environment with no network or hub cache, and the per-worker thread count (pytest-xdist runs one
process per core, `-n auto` in pyproject.toml)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# pytest-xdist runs the suite in one process per core (`-n auto` in pyproject.toml): each worker, and
# the runs it starts, gets its share of the cores for torch, so the workers do not fight over them.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)


def _absl_writes_to_the_real_stderr() -> None:
    """absl's logging handler (tensorboard's absl-py, imported by OpenVINO among others) keeps the stream
    that was sys.stderr when it was imported, and closes it whenever logging is reconfigured (Hydra does,
    at every run) unless it is the real stderr. Imported inside a command run in the test process, that
    stream would be the test's capture: give it the real one, once, before any test runs."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    import sys

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_writes_to_the_real_stderr()

# A tiny timm model from scratch on generated data: seconds on a laptop CPU.
TINY = [
    "model.name=test_resnet",
    "model.pretrained=false",
    "model.weights=null",
    "model.drop_rate=0.1",
    "data=fake",
    "trainer.log_every=2",
]

# a small U-Net on timm's tiny resnet, trained on the generated shapes
SEG_TINY = [
    "model=unet_resnet34",
    "model.name=test_resnet",
    "model.pretrained=false",
    "data=shapes",
    "model.decoder_channels=[64,32,32,16]",
    "finetune.head_epochs=0",
    "optimizer.lr=3e-3",
    "trainer.log_every=4",
]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No hub cache of the user's, no network retries, output not a TTY."""
    env = dict(os.environ)
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        TORCH_HOME=str(tmp_path / "torch"),
        TRAINER_CACHE=str(tmp_path / "trainer-cache"),  # predict's exports for other runtimes
        HYDRA_FULL_ERROR="0",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(tmp_path),  # a user's own modules live in their folder
        OMP_NUM_THREADS=str(THREADS),
    )
    return env


# A subprocess timeout is a hang guard only: far above any run's time on a busy machine, never a speed check.
HANG_GUARD = 1800


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
