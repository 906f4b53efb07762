"""End-to-end tests: the real commands (`train`, `predict`, `evaluate`, `export-model`) on real or
generated data, through the runner in runner.py (read its docstring first: how a run inside the test
process is made equal to a real one, and which runs are real subprocesses). ``finished_run`` is one
finished tiny run, made once per test process and copied for each test."""

from __future__ import annotations

from pathlib import Path

import pytest
from runner import train
from support import TINY


@pytest.fixture(scope="session")
def _tiny_run_once(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_run")
    train([*TINY, "trainer.epochs=1", f"hydra.run.dir={root / 'run'}"], root)
    return root / "run"


@pytest.fixture
def finished_run(_tiny_run_once, tmp_path) -> Path:
    """A finished one-epoch TINY run made by the real command (once per test process), copied to tmp_path/run
    for this test to change as it likes."""
    import shutil

    return Path(shutil.copytree(_tiny_run_once, tmp_path / "run"))
