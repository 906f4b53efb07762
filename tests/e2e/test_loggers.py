"""The logger group, read back with the real clients: MLflow's client finds the run with its params,
every epoch's metric on the step axis, the artifacts and the best checkpoint; W&B's offline run file
holds the history and the config; a resumed run appends to the same MLflow run / W&B run id; csv keeps
every scalar once; a missing extra is one paragraph naming it."""

from __future__ import annotations

import csv
import json
import struct

import pytest
from runner import train
from support import TINY

from trainer.runs import loggers

QUICK = [*TINY, "data.dataset.train_size=64", "data.dataset.val_size=32", "data.batch_size=16"]


def metrics_json(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def epoch_steps(run_dir):
    """(global step, val/acc) of each epoch, from the run folder's own metrics.json."""
    m = metrics_json(run_dir)
    steps, per_epoch = m["global_step"] // m["epochs_done"], [h["val/acc"] for h in m["history"]]
    return [(steps * (i + 1), v) for i, v in enumerate(per_epoch)]


def same_points(logged, expected):
    """The same steps, and the same values to float32 precision."""
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


@pytest.fixture
def mlflow_client(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    del mlflow
    from mlflow.tracking import MlflowClient

    return lambda: MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_mlflow_holds_the_params_every_epoch_the_artifacts_and_a_resume_continues_the_run(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    args = [*QUICK, "logger=[tensorboard,mlflow]", "optimizer.lr=2e-3", f"hydra.run.dir={run_dir}"]
    train([*args, "trainer.epochs=1"], tmp_path)
    client = mlflow_client()
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.002" and run.data.params["model.name"] == "test_resnet"
    assert run.data.tags["best_checkpoint"] == metrics_json(run_dir)["best_checkpoint"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "metrics.json", "metrics.csv", "confusion_matrix.png"} <= artifacts
    assert (run_dir / "tb").is_dir()  # the other logger still writes

    train([*args, "trainer.epochs=2", f"resume={run_dir}"], tmp_path)  # one more epoch, same run
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    same_points([(h.step, h.value) for h in history], epoch_steps(run_dir))
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len({h.step for h in losses}) == len(losses) >= 2  # each logged step once


def read_wandb_records(path):
    """The protobuf records of a W&B run file (its LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, pending = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(path):
    rows, config, run_id = [], {}, None
    for r in read_wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "run":
            run_id = r.run.run_id
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
    return run_id, config, rows


def test_wandb_offline_files_hold_the_history_and_a_resume_keeps_the_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):  # no key anywhere: offline
        monkeypatch.delenv(key, raising=False)
    env = {"HOME": str(tmp_path), "WANDB_SILENT": "true"}
    run_dir = tmp_path / "run"
    args = [*QUICK, "logger=wandb", f"hydra.run.dir={run_dir}"]
    train([*args, "trainer.epochs=1"], tmp_path, env=env)
    train([*args, "trainer.epochs=2", f"resume={run_dir}"], tmp_path, env=env)
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one per session, both of the same run (wandb sync joins them)
    sessions = [wandb_history(f) for f in files]
    assert sessions[0][0] == sessions[1][0]
    assert sessions[0][1]["model.name"] == "test_resnet"
    rows = sessions[0][2] + sessions[1][2]
    val = [(r["_step"], r["val/acc"]) for r in rows if "val/acc" in r]
    same_points(val, epoch_steps(run_dir))
    assert (files[1].parent / "files" / "curves.png").is_file()
    assert not (run_dir / "tb").exists()  # only the loggers asked for


def test_csv_keeps_every_scalar_once_across_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [*QUICK, "logger=csv", f"hydra.run.dir={run_dir}"]
    train([*args, "trainer.epochs=1"], tmp_path)
    with open(run_dir / "scalars.csv", "a") as f:  # what a killed session wrote after its last checkpoint
        f.write("999,train/loss,9.0\n")
    train([*args, "trainer.epochs=2", f"resume={run_dir}"], tmp_path)
    rows = list(csv.DictReader(open(run_dir / "scalars.csv")))
    pairs = [(int(r["step"]), r["key"]) for r in rows]
    assert len(pairs) == len(set(pairs)) and (999, "train/loss") not in pairs
    same_points([(s, float(r["value"])) for (s, k), r in zip(pairs, rows) if k == "val/acc"], epoch_steps(run_dir))


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setattr(loggers.MlflowSink, "requires", "no_such_package_here")
    why = loggers.missing_extra(loggers.MlflowSink, "mlflow")
    assert "transfer-trainer[mlflow]" in why and "no_such_package_here" in why
    assert loggers.missing_extra(loggers.TensorBoardSink, "tensorboard") is None


def test_no_logger_writes_no_events_but_the_run_folder_files(tmp_path):
    run_dir = tmp_path / "run"
    train([*QUICK, "logger=[]", "trainer.epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert not (run_dir / "tb").exists() and (run_dir / "metrics.csv").is_file() and (run_dir / "curves.png").is_file()


@pytest.mark.slow
def test_a_sweeps_jobs_are_one_mlflow_experiment(tmp_path, mlflow_client):
    train(["-m", *QUICK, "optimizer.lr=1e-3,2e-3", "logger=mlflow", "trainer.epochs=1"], tmp_path)
    client = mlflow_client()
    experiments = [e for e in client.search_experiments() if e.name.startswith("train outputs/multirun/")]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.001", "0.002"]
    assert {r.data.tags["sweep"] for r in runs} == {experiments[0].name.removeprefix("train ")}


def test_a_new_logger_is_one_class_named_in_the_config(tmp_path):
    """A user's own sink: a class in their package, named as logger.<name>._target_; the run gives it
    what its constructor asks for and every scalar."""
    (tmp_path / "my_sinks.py").write_text(
        "import json\n"
        "from trainer.runs.loggers import Sink\n\n"
        "class JsonLines(Sink):\n"
        "    def __init__(self, run_dir, run_name, path='lines.jsonl'):\n"
        "        self.file = open(run_dir / path, 'a')\n"
        "        self.file.write(json.dumps({'run_name': run_name}) + '\\n')\n\n"
        "    def scalars(self, values, step):\n"
        "        self.file.write(json.dumps({'step': step, **values}) + '\\n')\n\n"
        "    def close(self):\n"
        "        self.file.close()\n"
    )
    run_dir = tmp_path / "run"
    args = [*QUICK, "trainer.epochs=1", f"hydra.run.dir={run_dir}", "allow_targets=[my_sinks.]"]
    train([*args, "logger=[csv]", "+logger.lines._target_=my_sinks.JsonLines", "+logger.lines.path=s.jsonl"], tmp_path)
    lines = [json.loads(line) for line in (run_dir / "s.jsonl").read_text().splitlines()]
    assert lines[0] == {"run_name": "run"}
    written = {(int(r["step"]), r["key"]) for r in csv.DictReader(open(run_dir / "scalars.csv"))}
    assert {(r["step"], k) for r in lines[1:] for k in r if k != "step"} == written  # the same scalars as csv
    refused = train([*QUICK, "+logger.lines._target_=my_sinks.JsonLines"], tmp_path, check=False)
    assert refused.returncode == 2 and "allow_targets" in refused.stdout + refused.stderr
    missing = train([*QUICK, "+logger.x._target_=not_here.Sink", "allow_targets=[not_here.]"], tmp_path, check=False)
    said = missing.stdout + missing.stderr
    assert missing.returncode == 2 and "logger.x._target_=not_here.Sink: cannot be imported" in said
    assert "Traceback" not in said
