"""Where a run's numbers go besides its run folder: the ``logger`` group (conf/logger/), one or several
at once (``logger=[tensorboard,mlflow]``).

Every sink gets the same things on the one step axis (optimizer steps): the scalars, the hyperparameters
(the essentials and what the command line set), the confusion matrix, and at the end the run folder's
curves.png, confusion_matrix.png and metrics.json as artifacts with the best checkpoint's path. A sink
starts on first use and is told the id it had before when the run is resumed (the checkpoint keeps the
ids), so a resumed run continues the same MLflow run or W&B run. Only rank 0 has sinks.

- ``tensorboard``: event files in ``<run>/tb`` (``tensorboard --logdir outputs``).
- ``csv``: ``<run>/scalars.csv``, every scalar as ``step,key,value`` (metrics.csv has one row per epoch).
- ``mlflow``: MLflow's client; a local SQLite store ``mlflow.db`` with artifacts in ``mlruns/`` in the
  folder `train` runs from (where outputs/ is: ``mlflow ui`` there shows it), or ``logger.mlflow.tracking_uri``.
- ``wandb``: Weights & Biases; offline (``<run>/wandb/``, ``wandb sync`` later) when no API key is set up.
"""

from __future__ import annotations

import csv
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from trainer.config.targets import buildable
from trainer.runs.csvcells import SafeWriter

log = logging.getLogger("trainer")

MAX_CSV_BYTES = 256 * 2**20  # a scalars.csv read back on resume: ours, but bounded like any run-folder file


def missing_extra(sink: type[Sink], name: str) -> str | None:
    """The one-paragraph reason ``logger=name`` (built by ``sink``) cannot run here, or None."""
    package = sink.requires
    if package is None:
        return None
    import importlib.util

    if importlib.util.find_spec(package) is None:
        extra = f"'transfer-trainer[{sink.extra}]' (or pip install {package})" if sink.extra else package
        return (
            f"logger={name} needs the {package} package, which is not installed: pip install {extra}, "
            f"or leave {name} out of logger=."
        )
    return None


class Sink:
    """What a logger does with a run's records; each method is a no-op unless a sink needs it.

    A logger option (conf/logger/<name>.yaml) names its sink class as ``_target_`` with its keys; the
    run adds what its constructor takes of ``run_dir``, ``hparams``, ``run_name`` and ``sweep`` (the
    sweep's folder, or None). ``requires``: the package it needs, refused before training when missing,
    with the ``extra`` that installs it."""

    name = ""
    requires: str | None = None
    extra: str | None = None

    def resume(self, step: int, run_id: str | None) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, image: Any, step: int) -> None:
        """``image``: HWC uint8 array (a rendered PNG)."""

    def grid(self, tag: str, grid: Any, step: int) -> None:
        """``grid``: a CHW float tensor of training images."""

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, files: list[Path], summary: dict[str, Any]) -> None:
        pass

    def run_id(self) -> str | None:
        return None

    def close(self) -> None:
        pass


@buildable
class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.purge_step, self._writer = run_dir, None, None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed session wrote after the checkpoint we resumed from
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.purge_step)
        return self._writer

    def resume(self, step: int, run_id: str | None) -> None:
        self.purge_step = step

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def grid(self, tag: str, grid: Any, step: int) -> None:
        self.writer.add_image(tag, grid, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(hparams, metrics):
            self.writer.file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@buildable
class CsvSink(Sink):
    """``<run>/scalars.csv``: ``step,key,value`` for every scalar, appended as they come."""

    name = "csv"

    def __init__(self, run_dir: Path) -> None:
        self.path, self._file, self._writer = Path(run_dir) / "scalars.csv", None, None

    def resume(self, step: int, run_id: str | None) -> None:
        """Rows a killed session wrote after the checkpoint's step are dropped (as TensorBoard's purge_step)."""
        if not self.path.is_file():
            return
        if self.path.stat().st_size > MAX_CSV_BYTES:
            log.warning("%s is over %d MiB: started anew", self.path, MAX_CSV_BYTES >> 20)
            self.path.unlink()
            return
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            kept = [r for r in csv.reader(f) if len(r) == 3 and r[0].isdigit() and int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows([["step", "key", "value"], *kept])  # the rows as read: already written safe

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._file is None:
            new = not self.path.is_file()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", newline="")
            self._writer = SafeWriter(self._file)
            if new:
                self._writer.writerow(["step", "key", "value"])
        assert self._writer is not None
        self._writer.writerows([[step, k, repr(float(v))] for k, v in values.items()])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def default_mlflow_uri(where: Path) -> str:
    return f"sqlite:///{(where / 'mlflow.db').resolve()}"


@buildable
class MlflowSink(Sink):
    """An MLflow run in ``experiment``: params at its start, metrics on the step axis, artifacts at the end."""

    name = "mlflow"

    requires = extra = "mlflow"

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any],
        run_name: str,
        sweep: str | None = None,
        tracking_uri: str | None = None,
        experiment: str | None = None,
    ) -> None:
        self.uri = tracking_uri or default_mlflow_uri(Path.cwd())
        self.experiment = experiment or (f"train {sweep}" if sweep else "train")
        self.run_name, self.params = run_name, hparams
        self.tags = {"run_dir": str(run_dir), **({"sweep": sweep} if sweep else {})}
        self.resumed_id: str | None = None
        self._client: Any = None
        self._id: str | None = None

    def resume(self, step: int, run_id: str | None) -> None:
        self.resumed_id = run_id

    def _start(self) -> tuple[Any, str]:
        if self._client is not None and self._id is not None:
            return self._client, self._id
        if self._id is not None:  # finished, then used again (a run extended in the same session)
            self.resumed_id = self._id
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        if self.resumed_id is not None:
            try:
                client.get_run(self.resumed_id)
                client.update_run(self.resumed_id, status="RUNNING")
                self._client, self._id = client, self.resumed_id
                log.info("logger=mlflow: continuing run %s (%s)", self._id, self.uri)
                return client, self._id
            except Exception as e:  # the store no longer has it: a new run, said so
                log.warning(
                    "logger=mlflow: run %s not found in %s (%s): starting a new one", self.resumed_id, self.uri, e
                )
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifacts = None
            if self.uri.startswith(
                "sqlite:///"
            ):  # artifacts beside the local store, not in the current folder's ./mlruns by chance
                artifacts = (Path(self.uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
            experiment_id = client.create_experiment(self.experiment, artifact_location=artifacts)
        run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self._client, self._id = client, run.info.run_id
        params = [Param(k[:250], str(v)[:500]) for k, v in self.params.items()]
        for i in range(0, len(params), 100):
            client.log_batch(self._id, params=params[i : i + 100])
        log.info("logger=mlflow: run %s in experiment %r (%s)", self._id, self.experiment, self.uri)
        return client, self._id

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        client, run_id = self._start()
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in values.items()])

    def finish(self, files: list[Path], summary: dict[str, Any]) -> None:
        client, run_id = self._start()
        for f in files:
            if f.is_file():
                client.log_artifact(run_id, str(f))
        if summary.get("best_checkpoint"):
            client.set_tag(run_id, "best_checkpoint", str(summary["best_checkpoint"]))
        if summary.get("best") is not None:
            client.log_metric(run_id, "best/" + str(summary.get("monitor")), float(summary["best"]))
        client.set_terminated(run_id, status="FINISHED")
        self._client = None  # finished: close has nothing left to mark

    def run_id(self) -> str | None:
        return self._id or self.resumed_id

    def close(self) -> None:
        if self._client is not None and self._id is not None:
            self._client.set_terminated(self._id, status="KILLED")  # stopped part-way; a resume sets it RUNNING


def wandb_has_key() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


@buildable
class WandbSink(Sink):
    """A W&B run (offline without an API key) in ``project``, grouped by sweep."""

    name = "wandb"

    requires = extra = "wandb"

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any],
        run_name: str,
        sweep: str | None = None,
        project: str = "trainer",
        entity: str | None = None,
        mode: str = "auto",
        group: str | None = None,
    ) -> None:
        self.run_dir, self.params, self.run_name = Path(run_dir), hparams, run_name
        self.settings = {"project": project, "entity": entity, "mode": mode, "group": group or sweep}
        self.resumed_id: str | None = None
        self._run: Any = None
        self._id: str | None = None

    def resume(self, step: int, run_id: str | None) -> None:
        self.resumed_id = run_id

    @property
    def mode(self) -> str:
        mode = str(self.settings.get("mode") or "auto")
        return ("online" if wandb_has_key() else "offline") if mode == "auto" else mode

    @property
    def run(self) -> Any:
        if self._run is None:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=str(self.settings.get("project") or "trainer"),
                entity=self.settings.get("entity"),
                group=self.settings.get("group"),
                name=self.run_name,
                id=self.resumed_id or uuid.uuid4().hex[:12],
                resume="allow",
                mode=self.mode,
                dir=str(self.run_dir),
                config=self.params,
                settings=wandb.Settings(silent=True, console="off"),
            )
            self._id = str(self._run.id)
            log.info("logger=wandb: run %s, %s (%s)", self._id, self.mode, self.run_dir / "wandb")
        return self._run

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in values.items()}, step=int(step))

    def image(self, tag: str, image: Any, step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image)}, step=int(step))

    def finish(self, files: list[Path], summary: dict[str, Any]) -> None:
        import shutil

        run = self.run
        for f in files:  # the run's files/ folder is what W&B uploads (now, or at `wandb sync`)
            if f.is_file():
                shutil.copyfile(f, Path(run.dir) / f.name)
        run.summary["best_checkpoint"] = summary.get("best_checkpoint")
        run.summary["best/" + str(summary.get("monitor"))] = summary.get("best")
        run.finish()
        self._run, self.resumed_id = None, self._id

    def run_id(self) -> str | None:
        return self._id or self.resumed_id

    def close(self) -> None:
        if self._run is not None:
            self._run.finish(exit_code=1)  # stopped part-way; a resume continues this id
            self._run = None
