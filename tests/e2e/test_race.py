"""hydra/sweeper=race: a loser pruned after its first report, the winner trained to the end of its plan
(paused and resumed between rounds, equal to an unbroken run), the summary and race.png; a killed race
continued by the same command (finished and pruned trials not run again, the killed job resumed)."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
import torch
from runner import train
from support import TINY

# the race's order with seed 0 over four configurations is 2, 0, 1, 3: lr=1e-2 reports first, then the
# loser (lr=1e-6, nothing learnt after an epoch), which must lose to it at the first rung
LRS = "optimizer.lr=1e-6,3e-2,1e-2,3e-3"
RACE = [
    "-m",
    *TINY,
    "data.dataset.train_size=128",
    "data.dataset.val_size=64",
    LRS,
    "hydra/sweeper=race",
    "hydra.sweeper.budget=10m",
    "hydra.sweeper.max_epochs=4",
    "hydra.sweeper.reduction_factor=2",
]


def _rows(sweep):
    with open(sweep / "summary.csv") as f:
        return {r["run_dir"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}


def _study(sweep):
    return optuna.load_study(study_name="race", storage=optuna.storages.RDBStorage(f"sqlite:///{sweep / 'race.db'}"))


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"]


@pytest.mark.slow
def test_a_race_prunes_the_loser_at_its_first_report_and_trains_the_winner_to_the_end(tmp_path):
    sweep = tmp_path / "race"
    out = train([*RACE, f"hydra.sweep.dir={sweep}"], tmp_path)
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    assert "race: 4 of 4 configurations, rungs at epoch(s) 1, 2, the winner trains 4 epochs" in text
    rows = _rows(sweep)
    assert len(rows) == 4
    loser = rows["0"]
    assert loser["reached"] == "1" and loser["stopped"].startswith("pruned by the race after epoch 1")
    winner = next(r for r in rows.values() if r["stopped"].startswith("won"))
    assert winner["rank"] == "1" and winner["reached"] == "4" and winner["status"] == "finished"
    job = sweep / winner["run_dir"].rsplit("/", 1)[-1]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["finished"] and metrics["epochs_done"] == 4
    assert float(winner["best"]) == pytest.approx(metrics["best"])
    assert "resumed from" in (job / "train.log").read_text()  # paused between rounds, resumed from last.pt
    # the study holds what the summary says: each trial's reports are its run's own per-epoch values
    for trial in _study(sweep).get_trials():
        run = json.loads((sweep / str(trial.user_attrs["job"]) / "metrics.json").read_text())
        assert trial.intermediate_values == {h["epoch"]: pytest.approx(h["val/acc"]) for h in run["history"]}
        if trial.state == optuna.trial.TrialState.PRUNED:
            # successive halving: a pruned trial was below the best value another trial reported at its rung
            epoch = trial.last_step
            others = [t.intermediate_values.get(epoch) for t in _study(sweep).get_trials() if t.number != trial.number]
            assert trial.intermediate_values[epoch] < max(v for v in others if v is not None)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(run["best"])
    assert (sweep / "race.png").stat().st_size > 10_000
    # the winner, paused at epochs 1 and 2 and resumed, trained exactly as one unbroken run of its config
    lr = next(o for o in winner["overrides"].split() if o.startswith("optimizer.lr="))
    plain = tmp_path / "plain"
    keep = [a for a in RACE if not a.startswith(("-m", "hydra", "optimizer.lr"))]
    train([*keep, lr, "trainer.epochs=4", f"hydra.run.dir={plain}"], tmp_path)
    raced, unbroken = _weights(job / "checkpoints" / "last.pt"), _weights(plain / "checkpoints" / "last.pt")
    assert raced.keys() == unbroken.keys()
    for name in raced:
        assert torch.equal(raced[name], unbroken[name]), name


@pytest.mark.slow
def test_a_killed_race_is_continued_by_the_same_command(tmp_path):
    sweep = tmp_path / "race"
    args = [*RACE, "checkpoint.every_n_steps=1", f"hydra.sweep.dir={sweep}"]
    # configuration 1 reports third in the first round: killed (SIGKILL, the whole command) at its 2nd step
    killed = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "step:2", "TRAINER_FAILPOINT_JOB": "1"})
    assert killed.returncode != 0
    before = {t.user_attrs["job"]: t for t in _study(sweep).get_trials()}
    assert before[0].user_attrs["pruned_at"] == 1  # the loser lost before the kill
    assert 1 not in before[1].intermediate_values  # the killed one had not reported
    pruned_mtime = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    out = train(args, tmp_path)
    text = out.stdout + out.stderr
    assert "timing an epoch" not in text  # the paces were kept in race.json
    assert "round 1: 2 trial(s) to epoch 1 (configurations 1, 3)" in text  # 2 and 0 had reported already
    assert "resumed from" in (sweep / "1" / "train.log").read_text()
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == pruned_mtime  # not run again
    rows = _rows(sweep)
    assert len(rows) == 4 and sum(r["stopped"].startswith("won") for r in rows.values()) == 1
    states = [t.state for t in _study(sweep).get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states

    again = train(args, tmp_path)  # a finished race: nothing left to run
    assert "trial(s) to epoch" not in again.stdout + again.stderr


def test_plan_true_shows_the_race_and_trains_nothing(tmp_path):
    sweep = tmp_path / "race"
    out = train([*RACE, "plan=true", f"hydra.sweep.dir={sweep}"], tmp_path)
    text = out.stdout + out.stderr
    assert "race: 4 of 4 configurations" in text and "plan only (plan=true)" in text
    record = json.loads((sweep / "race.json").read_text())
    assert "plan" not in record and record["used_s"] == 0  # the race itself plans again, with all its budget
    plan = record["preview"]
    assert plan["epochs"] == 4 and plan["rungs"] == [1, 2] and plan["survivors"] == [4, 2, 1]
    assert not list(sweep.glob("[0-9]*/metrics.json"))  # no trial trained
    bad = train([*RACE, "hydra.sweeper.budget=soon", f"hydra.sweep.dir={tmp_path / 'bad'}"], tmp_path, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "hydra.sweeper.budget='soon': give the race's total time" in bad.stderr
