"""trainer.config.settings: every run-level key is declared once, and docs/config.md is generated from the
declarations and conf/ (a stale reference, or a key in conf/ without a declaration, fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from trainer.config.reference import comments, markdown
from trainer.config.schema import CONF_DIR, compose_config, validate_config
from trainer.config.settings import SETTINGS
from trainer.errors import UserError

CONF = Path(CONF_DIR)
DOCS = Path(__file__).resolve().parents[3] / "docs" / "config.md"


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if key.startswith("_") or key == "dataset":  # what the option builds, not a setting
            continue
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _conf_keys() -> list[str]:
    top = yaml.safe_load((CONF / "train.yaml").read_text())
    top.pop("hydra"), top.pop("defaults")
    keys = _leaves(top)
    for group in ("model", "data"):
        keys += _leaves(yaml.safe_load((CONF / group / "_base.yaml").read_text()), f"{group}.")
    return keys


def test_every_key_in_conf_is_declared():
    missing = [k for k in _conf_keys() if k not in SETTINGS]
    assert not missing, f"declare these in trainer/config/settings.py: {missing}"


def test_every_declared_key_is_set_somewhere_in_conf():
    default = compose_config([])
    found = set(_conf_keys())
    for path in CONF.glob("*/*.yaml"):  # keys every option of a group shares (optimizer.lr, model.decoder)
        node = yaml.safe_load(path.read_text()) or {}
        found |= {f"{path.parent.name}.{k}" for k in _leaves(node)} | set(_leaves(node))
    stray = [k for k in SETTINGS if k not in found and OmegaConf.select(default, k, default="<x>") == "<x>"]
    assert not stray, stray


def test_every_default_passes_its_own_declaration():
    validate_config(compose_config([]))
    for option in ("model=unet_resnet34", "data=segfolder", "optimizer=sgd", "scheduler=plateau"):
        if (CONF / option.split("=")[0] / f"{option.split('=')[1]}.yaml").is_file():
            validate_config(compose_config([option, "data.root=/x"] if option.startswith("data") else [option]))


@pytest.mark.parametrize(
    "override, words",
    [("trainer.device=gpu", "auto, cpu, cuda, cuda:N or mps"), ("data.num_workers=-1", "from 0 to 256")],
)
def test_a_bad_value_names_what_is_valid(override, words):
    with pytest.raises(UserError, match=words):
        validate_config(compose_config([override]))


def test_the_comment_beside_a_key_is_its_meaning():
    _, docs = comments(CONF / "train.yaml")
    assert docs["trainer.early_stop_patience"].startswith("N: stop after N epochs")
    assert "randaugment" in comments(CONF / "data" / "_base.yaml")[1]["augment"]  # continued on the next line


def test_docs_config_md_is_generated_and_current():
    assert DOCS.read_text() == markdown(), "docs/config.md is stale: run `python -m trainer.config.reference`"
    for key in SETTINGS:
        assert f"| `{key}` |" in DOCS.read_text()
