"""``train --help``: the groups and their options read from the config folder, the composed defaults
(with the given overrides) and the examples, in one composition.

Hydra's own help formatter composes the config once per group option (81 times); this shows the
same sections from the folder listing and a single composition.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from trainer.config.overrides import searchpath
from trainer.config.schema import CONF_DIR, compose_config


def group_options(conf_dir: str = CONF_DIR) -> dict[str, list[str]]:
    """Each config group of the app (hydra's own groups left out) and its options, from the folders."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in Path(conf_dir).iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))
        if options:
            groups[folder.name] = options
    return groups


def help_text(overrides: list[str]) -> str:
    spec = OmegaConf.load(Path(CONF_DIR) / "train.yaml").hydra.help
    merged = group_options()
    folders = [e.removeprefix("file://") for e in searchpath(overrides) if e.startswith("file://")]
    for folder in (f for f in folders if Path(f).is_dir()):  # the user's own options beside the packaged ones
        for group, options in group_options(folder).items():
            merged[group] = sorted(set(merged.get(group, [])) | set(options))
    groups = "\n".join(f"{group}: {', '.join(options)}" for group, options in merged.items())
    config = OmegaConf.to_yaml(compose_config(overrides))
    text = str(spec.template)
    for name, value in (
        ("${hydra.help.header}", spec.header),
        ("${hydra.help.footer}", spec.footer),
        ("$APP_CONFIG_GROUPS", groups),
        ("$CONFIG", config),
    ):
        text = text.replace(name, str(value))
    return text
