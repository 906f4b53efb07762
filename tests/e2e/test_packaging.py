"""The tool as users install it: a wheel in a fresh virtualenv, used from an empty folder, no checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from support import HANG_GUARD, REPO, TINY, offline_env


@pytest.mark.slow
def test_the_wheel_installs_and_trains_from_an_empty_folder(tmp_path):
    src = tmp_path / "src"  # a copy, so that building leaves the checkout untouched
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("trainer", "conf", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        timeout=HANG_GUARD,
    )
    (wheel,) = dist.glob("transfer_trainer-*.whl")  # the distribution's name, free on PyPI
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("trainer/conf/") for n in names if n.startswith("trainer/conf/")}
    assert shipped == {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert "hydra_plugins/trainer_race/race_sweeper.py" in names  # Hydra finds hydra/sweeper=race there

    venv = tmp_path / "venv"  # a fresh environment: the wheel, and the test's dependencies beside it
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=HANG_GUARD)
    bin_dir = venv / "bin"
    subprocess.run(
        [bin_dir / "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=HANG_GUARD
    )
    site = subprocess.run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # its dependencies come from the test's environment (installed packages, not the checkout)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**offline_env(empty), "PYTHONPATH": ""}

    where = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "import trainer, trainer.config.schema as c; print(trainer.__file__); print(c.CONF_DIR)",
        ],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout  # not the checkout
    helped = subprocess.run(
        [bin_dir / "train", "--help"], cwd=empty, env=env, capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert helped.returncode == 0 and "efficientnet_lite0" in helped.stdout, helped.stderr
    ran = subprocess.run(
        [bin_dir / "python", "-m", "trainer", *TINY, "trainer.epochs=1", "hydra.run.dir=run"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (empty / "run" / "checkpoints" / "best.pt").is_file()
