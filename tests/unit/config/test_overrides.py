"""trainer.config.overrides: what the user typed, read before Hydra (and before torch)."""

from __future__ import annotations

import os

import pytest

from trainer.config.overrides import (
    first_value,
    is_interval,
    is_override,
    key_of,
    normalize_overrides,
    searchpath,
    value_of,
    with_config_dirs,
)
from trainer.errors import UserError


def test_the_key_and_value_of_an_override():
    assert key_of("+data.dataset.imbalance=0.1") == "data.dataset.imbalance"
    assert key_of("~trainer.ema_decay") == "trainer.ema_decay"
    assert value_of("data.root='/my photos'") == "/my photos"
    assert is_override("a=1") and is_override("~a") and not is_override("-m") and not is_override("--cfg")


def test_home_folders_and_plain_strings_are_made_readable_for_hydra():
    out = normalize_overrides(["data.root=~/pets", "model.name=résnet", "-m"])
    assert out[0] == f"data.root={os.path.expanduser('~/pets')}"
    assert out[1] == "model.name='résnet'" and out[2] == "-m"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["data.root=/my", "photos"], "quote the whole override for the shell: 'data.root=/my photos'"),
        (["optimizer.lr=["], "cannot read the override"),
    ],
)
def test_what_hydra_cannot_read_is_one_paragraph(argv, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[")):
        normalize_overrides(argv)


def test_a_sweeps_first_value_and_a_search_interval():
    assert first_value("optimizer.lr=1e-4,1e-3") == "optimizer.lr=0.0001"  # as Hydra reads it
    assert first_value("data.fold=range(5)") == "data.fold=0"
    assert first_value("optimizer.lr=interval(1e-4,1e-2)") is None and is_interval("optimizer.lr=interval(1e-4,1e-2)")
    assert first_value("trainer.epochs=3") == "trainer.epochs=3"


def test_config_dirs_join_the_search_path(tmp_path):
    out = with_config_dirs(["hydra.searchpath=[pkg://other]"], ["--config-dir", str(tmp_path)])
    assert searchpath(out) == ["pkg://other", f"file://{tmp_path}"]
