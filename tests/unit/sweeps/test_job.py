"""A re-run sweep knows a finished job by its config, with what the run chose for an ``auto`` setting."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from trainer.runs.checkpoint import save_checkpoint
from trainer.sweeps.job import previous_sweep_job


def _job(tmp_path, stored: dict, finished: bool = True):
    job = tmp_path / "0"
    state = {"model": {}, "epoch": 2, "config": OmegaConf.to_yaml(OmegaConf.create(stored))}
    save_checkpoint(state, job / "checkpoints" / "last.pt")
    (job / "metrics.json").write_text(json.dumps({"finished": finished, "best": 0.9}))
    return job


def test_a_finished_job_whose_auto_settings_were_resolved_is_found_again(tmp_path):
    asked = {
        "trainer": {"precision": "auto", "channels_last": "auto", "accumulate": 1, "epochs": 2},
        "data": {"batch_size": "auto"},
        "optimizer": {"lr": "auto"},
    }
    chosen = {
        "trainer": {"precision": "bf16", "channels_last": True, "accumulate": 4, "epochs": 2},
        "data": {"batch_size": 48},
        "optimizer": {"lr": 0.0021},
    }
    job = _job(tmp_path, chosen)
    assert previous_sweep_job(job, OmegaConf.create(asked)) == {"finished": True, "best": 0.9}
    asked["trainer"]["epochs"] = 3  # a setting the user changed: a new job
    assert previous_sweep_job(job, OmegaConf.create(asked)) is None
    asked["trainer"]["epochs"], asked["trainer"]["precision"] = 2, "fp32"  # fp32 given where bf16 was chosen
    assert previous_sweep_job(job, OmegaConf.create(asked)) is None
