"""``hydra/sweeper=race``: the best of several configurations within one time budget.

Successive halving on Optuna. The swept overrides give the configurations (a grid, or ``configs``
drawn from intervals); each is one trial of an Optuna study kept in ``race.db`` (SQLite) in the sweep
folder. The race runs in rounds: every trial trains to the first rung (``min_epochs``), reporting its
monitored value each epoch and asking the study's pruner (``SuccessiveHalvingPruner`` or
``HyperbandPruner``) whether it lost (trainer/loop/race.py); a trial that goes on pauses at the round's
end (last.pt), and the next round resumes the survivors, best first, to the next rung (``min_epochs`` x
``reduction_factor``), until the winner reaches the end of its plan (every trial is planned, and its
schedule set, for the same ``epochs``). Before anything trains, an epoch of each configuration is timed
(``race.pace``) and the plan (how many configurations, the rungs, the winner's epochs) is chosen to fit
the budget; before each round the time left is checked against the plan, and a trial whose next epoch
would end past the budget stops. Running the same command again continues the race from ``race.json``
and ``race.db``: finished and pruned trials are not run again, a killed one resumes from its last.pt.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config.overrides import key_of
from trainer.errors import UserError

log = logging.getLogger("trainer")

MARGIN = 0.04  # of the budget, kept for what the plan does not time (the summary, the last exit)
NO_PACE = {
    "optimizer",
    "scheduler",
    "schedule",
    "loss",
    "seed",
    "checkpoint",
    "race",
}  # keys that do not change an epoch's time
OWN_KEYS = ("trainer.epochs", "trainer.time_budget", "plan", "resume", "lr_find")  # the race sets or refuses these


@dataclass
class RacePlan:
    """What the race will do, chosen from the timed paces before anything trains."""

    configs: int  # raced
    swept: int  # configurations the overrides give
    rungs: list[int]  # epochs at which the pruner decides
    epochs: int  # every trial's planned length; the winner trains all of it
    survivors: list[int]  # trials planned in each round (the rungs', then the last)
    expected_s: float
    budget_s: float

    def lines(self) -> list[str]:
        rounds = [*self.rungs, self.epochs]
        steps = ", ".join(f"{n} to epoch {e}" for n, e in zip(self.survivors, rounds))
        return [
            f"race: {self.configs} of {self.swept} configurations, rungs at epoch(s) {', '.join(map(str, self.rungs))}, "
            f"the winner trains {self.epochs} epochs",
            f"race: rounds {steps}; about {_minutes(self.expected_s)} of the {_minutes(self.budget_s)} budget",
        ]


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def survivors(n: int, eta: int) -> list[int]:
    """Trials in each round of successive halving from ``n``: a ``1/eta`` share goes on, down to one."""
    counts = [n]
    while counts[-1] > 1:
        counts.append(max(1, counts[-1] // eta))
    return counts


def race_cost(paces: list[float], start_s: float, counts: list[int], rounds: list[int]) -> float:
    """Seconds of a race: round 0 trains every configuration to ``rounds[0]`` at its own pace; later
    rounds the planned survivors from the previous round's epoch, at the mean pace; each job start pays
    ``start_s``."""
    mean = sum(paces) / len(paces)
    cost = sum(start_s + rounds[0] * p for p in paces)
    for j in range(1, len(counts)):
        cost += counts[j] * (start_s + (rounds[j] - rounds[j - 1]) * mean)
    return cost


def plan_race(
    paces: list[float], start_s: float, budget_s: float, eta: int, min_epochs: int, max_epochs: int
) -> RacePlan | None:
    """The plan with the most configurations (the first ``k`` of ``paces``, in race order) whose winner
    still trains past the last rung, and the most epochs for it that fit ``budget_s``; None when not even
    two configurations fit."""
    for k in range(len(paces), 1, -1):
        counts = survivors(k, eta)
        rungs = [min_epochs * eta**j for j in range(len(counts) - 1)]
        while rungs and rungs[-1] >= max_epochs:
            rungs.pop()
        counts = counts[: len(rungs) + 1]
        best = None
        for epochs in range((rungs[-1] if rungs else 0) + 1, max_epochs + 1):
            cost = race_cost(paces[:k], start_s, counts, [*rungs, epochs])
            if cost > budget_s:
                break
            best = (epochs, cost)
        if best is not None and rungs:
            return RacePlan(k, len(paces), rungs, best[0], counts, best[1], budget_s)
    return None


# ---------------------------------------------------------------- configurations


def configurations(overrides: list[Any], count: int | None, seed: int) -> list[list[str]]:
    """The configurations the parsed sweep ``overrides`` give, each a list of ``key=value``: the grid of
    the listed values, or, with an ``interval`` among them, ``count`` draws (log-uniform when tagged
    ``log``), in a seeded order. ``count`` also caps a grid (a seeded sample of it)."""
    import itertools

    rng = random.Random(seed)
    fixed, grid, drawn = [], [], []
    for o in overrides:
        key = o.get_key_element()
        if not o.is_sweep_override():
            fixed.append(f"{key}={o.get_value_element_as_str()}")
        elif o.is_discrete_sweep():
            grid.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            drawn.append((key, o.value()))
    if drawn:
        if not count:
            raise UserError(
                "hydra/sweeper=race: an interval(...) among the swept values needs hydra.sweeper.configs=N, "
                "the number of configurations to draw from it (e.g. hydra.sweeper.configs=12)."
            )
        combos = [rng.choice(list(itertools.product(*grid))) if grid else () for _ in range(count)]
        configs = [[*fixed, *c, *(f"{k}={_draw(rng, v)}" for k, v in drawn)] for c in combos]
    else:
        configs = [[*fixed, *c] for c in itertools.product(*grid)]
        if count and count < len(configs):
            configs = rng.sample(configs, count)
    return configs


def _draw(rng: random.Random, interval: Any) -> str:
    lo, hi = float(interval.start), float(interval.end)
    if "log" in interval.tags:
        return f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}"
    return f"{rng.uniform(lo, hi):.4g}"


def pace_key(config: list[str]) -> tuple[str, ...]:
    """What decides an epoch's time: the overrides but those of the optimizer, its lr multipliers, the
    schedule, the loss and the seed."""
    return tuple(
        o
        for o in config
        if key_of(o).split(".")[0].split("/")[0] not in NO_PACE
        and key_of(o) not in ("finetune.backbone_lr_mult", "finetune.layer_decay")
    )


def refuse_own_keys(configs: list[list[str]]) -> None:
    for o in configs[0] if configs else []:
        if key_of(o) in OWN_KEYS:
            raise UserError(
                f"hydra/sweeper=race sets {key_of(o)} itself (every trial is planned for the race's epochs, "
                "within its budget): drop it, and give hydra.sweeper.budget=... and hydra.sweeper.max_epochs=... instead."
            )


# ---------------------------------------------------------------- the race's record


class Record:
    """race.json: the configurations, their timed paces, the plan and the time used so far (all sessions)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / "race.json"
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            from trainer.config.untrusted import read_yaml

            data = read_yaml(self.path)  # JSON is YAML; read bounded, as any file a folder may hold
            self.data = data if isinstance(data, dict) else {}

    def start(self, configs: list[list[str]], budget_s: float) -> None:
        before = self.data.get("configs")
        if before is not None and before != configs:
            raise UserError(
                f"{self.path} holds another race (other configurations): continue it with the same overrides, "
                "or start a new one in another folder (hydra.sweep.dir=...)."
            )
        self.data.setdefault("configs", configs)
        self.data.setdefault("paces", {})
        self.data.setdefault("used_s", 0.0)
        self.data["budget_s"] = budget_s
        self.session, self.used_before = time.monotonic(), float(self.data["used_s"])

    @property
    def used_s(self) -> float:
        return self.used_before + time.monotonic() - self.session

    def left_s(self) -> float:
        return self.data["budget_s"] * (1 - MARGIN) - self.used_s

    def save(self, plan: RacePlan | None = None) -> None:
        if plan is not None:
            self.data["plan"] = asdict(plan)
        self.data["used_s"] = round(self.used_s, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


# ---------------------------------------------------------------- the race


@dataclass(frozen=True)
class RaceOptions:
    """hydra.sweeper.* of conf/hydra/sweeper/race.yaml."""

    budget_s: float
    reduction_factor: int
    min_epochs: int
    max_epochs: int
    pruner: str
    configs: int | None
    seed: int


def options_from(budget: Any, **keys: Any) -> RaceOptions:
    """The sweeper's keys checked, each refusal one paragraph naming the key."""
    from trainer.config.values import parse_duration

    try:
        budget_s = parse_duration(budget)
    except ValueError:
        budget_s = None
    if not budget_s:
        raise UserError(f"hydra.sweeper.budget={budget!r}: give the race's total time, e.g. hydra.sweeper.budget=30m.")
    for key, low in (("reduction_factor", 2), ("min_epochs", 1), ("max_epochs", 2), ("configs", 2)):
        value = keys.get(key)
        if value is None and key == "configs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"hydra.sweeper.{key}={value!r}: give an integer >= {low}.")
    if keys.get("pruner") not in ("halving", "hyperband"):
        raise UserError(f"hydra.sweeper.pruner={keys.get('pruner')!r}: give halving or hyperband.")
    return RaceOptions(budget_s=float(budget_s), **keys)


def run_race(launcher: Any, sweep_dir: Path, overrides: list[Any], options: RaceOptions) -> None:
    """The whole race (or, with ``plan=true`` among the overrides, its plan only)."""
    plan_only = any(key_of(str(o.input_line)) == "plan" and str(o.value()).lower() == "true" for o in overrides)
    overrides = [o for o in overrides if o.get_key_element() != "plan"]
    configs = configurations(overrides, options.configs, options.seed)
    refuse_own_keys(configs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = Record(sweep_dir)
    record.start(configs, options.budget_s)
    order = list(range(len(configs)))
    random.Random(options.seed).shuffle(order)  # the race's order: the first to report is not always the first listed
    paces = measure_paces(launcher, configs, order, record)
    order = [i for i in order if str(i) in paces]
    study = None if plan_only else open_study(sweep_dir, direction=next(iter(paces.values()))["mode"])
    plan = plan_from(record, paces, order, options)
    for line in plan.lines():
        log.info("%s", line)
    for i in order[plan.configs :]:  # said once: what the budget leaves out of the race
        log.warning(
            "race: configuration %d (%s) left out: the budget holds %d of them", i, " ".join(configs[i]), plan.configs
        )
    if study is None:  # the paces are kept; the plan and the time are the race's own, when it runs
        record.data["preview"] = asdict(plan)
        record.session = time.monotonic()  # this session's time is not the race's
        record.save()
        log.info("plan only (plan=true): nothing was trained; drop plan=true to race")
        return
    record.save(plan)
    keep_pruner(study, options, plan)
    trials = trials_for(study, configs, order[: plan.configs])
    rounds = [*plan.rungs, plan.epochs]
    for j, until in enumerate(rounds):
        # a study object of its own each round: the one that asked for the trials keeps its own stale copy
        # of them (Optuna's cache of a process's running trials), while the jobs report to the file
        run_round(launcher, sweep_dir, fresh(sweep_dir), trials, (j, until), plan, paces, record)
        record.save()
    announce(fresh(sweep_dir), sweep_dir, next(iter(paces.values()))["monitor"])


def fresh(sweep_dir: Path) -> Any:
    from trainer.loop.race import load_study

    return load_study(storage_url(sweep_dir))


def plan_from(record: Record, paces: dict[str, dict], order: list[int], options: RaceOptions) -> RacePlan:
    """The plan a first session chose (kept in race.json, so a continued race follows it), else a new one."""
    if record.data.get("plan"):
        return RacePlan(**record.data["plan"])
    start_s = float(record.data["start_s"])
    plan = plan_race(
        [paces[str(i)]["epoch_s"] for i in order],
        start_s,
        record.left_s(),
        options.reduction_factor,
        options.min_epochs,
        options.max_epochs,
    )
    if plan is None:
        fastest = min(p["epoch_s"] for p in paces.values())
        raise UserError(
            f"hydra.sweeper.budget: {_minutes(record.left_s())} left is too little for a race of even two "
            f"configurations here (an epoch takes {fastest:.0f} s or more, a job {start_s:.0f} s to start): give "
            "a larger hydra.sweeper.budget, fewer or faster configurations, or a smaller hydra.sweeper.min_epochs."
        )
    plan.swept = len(record.data["configs"])
    return plan


def measure_paces(launcher: Any, configs: list[list[str]], order: list[int], record: Record) -> dict[str, dict]:
    """An epoch of each configuration timed (once per pace key; kept in race.json): config index -> pace.
    A configuration that cannot be built is left out of the race, and said."""
    paces: dict[str, dict] = record.data["paces"]
    keys: dict[tuple[str, ...], int] = {}
    for i in order:
        keys.setdefault(pace_key(configs[i]), i)
    todo = [
        i
        for i in keys.values()
        if str(i) not in paces and not (record.path.parent / "pace" / str(i) / "failed").exists()
    ]
    if todo:
        log.info("race: timing an epoch of %d configuration(s) for the plan", len(todo))
        import trainer.loop.build  # noqa: F401  (torch and timm: imported once, not timed as a job's start)

        batch = [[*configs[i], "race.pace=true", f"hydra.sweep.subdir=pace/{i}"] for i in todo]
        t0 = time.monotonic()
        results = launcher.launch(batch, initial_job_idx=0)
        wall, measuring = time.monotonic() - t0, 0.0
        for i, result in zip(todo, results):
            value = _returned(result)
            if isinstance(value, dict):
                paces[str(i)] = value
                measuring += float(value.get("measure_s", 0.0))
            else:
                (record.path.parent / "pace" / str(i)).mkdir(parents=True, exist_ok=True)
                (record.path.parent / "pace" / str(i) / "failed").write_text("could not be built or timed\n")
        # a job's start: a timing job's wall time (Hydra's job, the build) but its measuring
        record.data["start_s"] = max(0.0, wall - measuring) / len(todo)
        record.save()
    out = {}
    for i in order:
        source = keys[pace_key(configs[i])]
        if str(source) in paces:
            out[str(i)] = paces[str(source)]
        else:
            log.warning(
                "race: configuration %d (%s) could not be built: left out (its log: %s)",
                i,
                " ".join(configs[i]),
                record.path.parent / "pace" / str(source),
            )
    if not out:
        raise UserError(
            f"hydra/sweeper=race: no configuration could be built; see the logs under {record.path.parent / 'pace'}."
        )
    return out


def _returned(result: Any) -> Any:
    try:
        return result.return_value
    except Exception:  # the job raised: its own log says why
        return None


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'race.db').absolute()}"


def open_study(sweep_dir: Path, direction: str) -> Any:
    """The race's study in race.db (created once; a continued race loads it)."""
    import os

    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # see trainer/loop/race.py
    import optuna

    from trainer.loop.race import STUDY

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return optuna.create_study(
        study_name=STUDY,
        storage=optuna.storages.RDBStorage(storage_url(sweep_dir)),
        load_if_exists=True,
        direction="maximize" if direction == "max" else "minimize",
    )


def keep_pruner(study: Any, options: RaceOptions, plan: RacePlan) -> None:
    """The pruner, in the study's attributes: the sweeper and every job build the same one from them."""
    if "pruner" not in study.user_attrs:
        spec = {
            "kind": options.pruner,
            "min_resource": options.min_epochs,
            "reduction_factor": options.reduction_factor,
            "max_resource": plan.epochs,
        }
        study.set_user_attr("pruner", spec)


def trials_for(study: Any, configs: list[list[str]], raced: list[int]) -> dict[int, int]:
    """Config index -> trial number: the trials a continued race already has, new ones for the rest."""
    have = {int(t.user_attrs["job"]): t.number for t in study.get_trials(deepcopy=False) if "job" in t.user_attrs}
    for i in raced:
        if i not in have:
            trial = study.ask()
            trial.set_user_attr("job", i)
            trial.set_user_attr("config", configs[i])
            have[i] = trial.number
    return {i: have[i] for i in raced}


def run_round(
    launcher: Any,
    sweep_dir: Path,
    study: Any,
    trials: dict[int, int],
    round_: tuple[int, int],
    plan: RacePlan,
    paces: dict[str, dict],
    record: Record,
) -> None:
    """Round ``j``: every trial still running trains to epoch ``until`` (best first after the first round),
    as many as the time left allows; each job's outcome goes to the study."""
    from optuna.trial import TrialState

    j, until = round_
    for i, n in trials.items():  # what a killed session's jobs ended as, before it could say so
        settle(study, n, sweep_dir / str(i))
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    going = [
        i for i, n in trials.items() if frozen[n].state == TrialState.RUNNING and (frozen[n].last_step or 0) < until
    ]
    if not going:
        return
    if j > 0:
        sign = -1 if study.direction.name == "MAXIMIZE" else 1
        going.sort(key=lambda i: sign * frozen[trials[i]].intermediate_values[frozen[trials[i]].last_step])
    if j > 0:  # the first round is the plan's own (it chose how many configurations race)
        going = within_budget(going, frozen, trials, (j, until), plan, paces, record, study)
    deadline = time.time() + record.left_s() + record.data["budget_s"] * MARGIN
    url = storage_url(sweep_dir)
    batch = [
        [
            *record.data["configs"][i],
            f"trainer.epochs={plan.epochs}",
            f"race.storage='{url}'",
            f"race.trial={frozen[trials[i]]._trial_id}",
            f"race.until={until}",
            f"race.deadline={deadline:.0f}",
            f"hydra.sweep.subdir={i}",
        ]
        for i in going
    ]
    log.info(
        "race: round %d: %d trial(s) to epoch %d (configurations %s)",
        j + 1,
        len(going),
        until,
        ", ".join(map(str, going)),
    )
    reached = {i: frozen[trials[i]].last_step or 0 for i in going}
    t0 = time.monotonic()
    launcher.launch(batch, initial_job_idx=0)
    learn(record, time.monotonic() - t0, {i: (reached[i], sweep_dir / str(i)) for i in going}, paces)
    for i in going:
        settle(study, trials[i], sweep_dir / str(i))


def learn(record: Record, wall: float, jobs: dict[int, tuple[int, Path]], paces: dict[str, dict]) -> None:
    """What a round really took, for the next rounds' estimates: a job's start (the round's time but the
    jobs' own training) and the training's pace against the timed one."""
    trained, timed, epochs = 0.0, 0.0, 0
    for i, (before, job_dir) in jobs.items():
        try:
            metrics = json.loads((job_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        done = int(metrics.get("epochs_done") or 0) - before
        if done > 0:
            trained += float(metrics.get("wall_time_s") or 0.0)
            timed += done * paces[str(i)]["epoch_s"]
            epochs += done
    if epochs:
        record.data["pace_factor"] = trained / max(timed, 1e-6)
        record.data["start_s"] = max(0.0, wall - trained) / len(jobs)


def cost_of(i: int, reached: int, until: int, paces: dict[str, dict], record: Record) -> float:
    """Seconds a job of configuration ``i`` from epoch ``reached`` to ``until`` takes: its start and its
    epochs at the timed pace (scaled by what the rounds so far really took against it)."""
    factor = record.data.get("pace_factor", 1.0)
    return record.data["start_s"] + factor * (until - reached) * paces[str(i)]["epoch_s"]


def within_budget(
    going: list[int],
    frozen: dict[int, Any],
    trials: dict[int, int],
    round_: tuple[int, int],
    plan: RacePlan,
    paces: dict[str, dict],
    record: Record,
    study: Any,
) -> list[int]:
    """The trials of this round that the time left allows (best first; at least one), after what the
    plan's later rounds need; the others end here, pruned for the budget, and said."""
    from optuna.trial import Trial, TrialState

    j, until = round_
    rounds = [*plan.rungs, plan.epochs]
    best = going[0]  # the later rounds are planned at the pace of the best so far
    later = sum(
        plan.survivors[k] * cost_of(best, rounds[k - 1], rounds[k], paces, record) for k in range(j + 1, len(rounds))
    )
    room, kept = record.left_s() - later, []
    for i in going:
        cost = cost_of(i, frozen[trials[i]].last_step or 0, until, paces, record)
        if kept and cost > room:
            break
        kept.append(i)
        room -= cost
    for i in going[len(kept) :]:
        why = f"not continued: the time left had room for {len(kept)} of the {len(going)} trials of round {j + 1}"
        Trial(study, frozen[trials[i]]._trial_id).set_user_attr("stopped", why)
        study.tell(trials[i], state=TrialState.PRUNED)
        log.info("race: configuration %d %s", i, why)
    return kept


def settle(study: Any, number: int, job_dir: Path) -> None:
    """A job's outcome into its trial: pruned, complete (its best value), failed, or still running (paused
    at the round's end, or killed: a continued race resumes it)."""
    from optuna.trial import Trial, TrialState

    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.RUNNING:
        return
    if metrics.get("status") == "failed":
        if (
            "re-run the sweep to resume it" in str(metrics.get("error"))
            and (job_dir / "checkpoints" / "last.pt").is_file()
        ):
            return  # killed from outside: the next session resumes it
        Trial(study, trial._trial_id).set_user_attr("stopped", f"failed: {metrics.get('error')}")
        study.tell(number, state=TrialState.FAIL)
    elif metrics.get("finished"):
        if "pruned_at" in trial.user_attrs:
            study.tell(number, state=TrialState.PRUNED)
        else:
            study.tell(number, metrics.get("best"))


def race_table(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Job folder name -> what the race says of it: the epoch reached, the monitored value at each rung,
    why it stopped, whether it won; empty for a sweep that is not a race."""
    record = Record(sweep_dir)
    if not (sweep_dir / "race.db").is_file() or not record.data.get("plan"):
        return {}
    study = fresh(sweep_dir)
    plan = RacePlan(**record.data["plan"])
    winner = _winner(study)
    table = {}
    for t in study.get_trials(deepcopy=False):
        if "job" not in t.user_attrs:
            continue
        values = t.intermediate_values
        at = [f"{e}: {values[e]:.4f}" for e in [*plan.rungs, plan.epochs] if e in values]
        state = t.state.name.lower()
        why = t.user_attrs.get("stopped") or {"complete": "finished its plan", "running": "paused"}.get(state, state)
        if t.number == winner:
            why = "won" if why == "finished its plan" else f"won ({why})"
        table[str(t.user_attrs["job"])] = {
            "status": {"complete": "finished", "running": "paused"}.get(state, state),
            "reached": t.last_step or 0,
            "at_rungs": "; ".join(at),
            "stopped": why,
            "curve": sorted(values.items()),
            "pruned": state == "pruned",
            "winner": t.number == winner,
        }
    return table


def _winner(study: Any) -> int | None:
    """The complete trial with the best value (the race's winner), or None."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    best = max if study.direction.name == "MAXIMIZE" else min
    return best(done, key=lambda t: t.value).number


def announce(study: Any, sweep_dir: Path, monitor: str) -> None:
    """The winner, said once, and race.png."""
    from trainer.runs.plots import race_png, write_png

    table = race_table(sweep_dir)
    win = next((job for job, row in table.items() if row["winner"]), None)
    if win is None:
        log.warning("race: no configuration finished its plan (see %s/summary.md)", sweep_dir)
    else:
        trial = next(t for t in study.get_trials(deepcopy=False) if str(t.user_attrs.get("job")) == win)
        log.info(
            "race: the winner is configuration %s (%s), best %.4f: %s",
            win,
            " ".join(trial.user_attrs["config"]),
            trial.value,
            sweep_dir / win,
        )
    curves = {job: row["curve"] for job, row in table.items() if row["curve"]}
    if curves:
        pruned = {job for job, row in table.items() if row["pruned"]}
        write_png(race_png(curves, pruned, win, monitor), sweep_dir / "race.png")
