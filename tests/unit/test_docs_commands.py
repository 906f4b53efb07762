"""Every `train`, `predict`, `evaluate` and `export-model` command written in README.md and docs/ is one the
tool accepts as typed: its keys and options exist and its values are valid (checked the way the command
checks them before doing any work; nothing is trained here, the e2e tests run the commands)."""

from __future__ import annotations

import re
import shlex

import pytest
from support import REPO

from trainer.config.overrides import is_override, normalize_overrides, with_config_dirs
from trainer.config.schema import explain_overrides
from trainer.use import evaluate, export, predict
from trainer.use.command import parse_args

PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "config.md")]
KEYS = {"predict": predict.KEYS, "evaluate": evaluate.KEYS, "export-model": export.KEYS}
TEMPLATE = re.compile(r"<|\.\.\.| \[|\$")  # <placeholder>, ..., [optional], $SHELL_VARIABLE
FLAGS = {"-m", "--multirun", "--help", "-h", "--cfg", "--resolve", "job", "hydra", "all"}


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # a command continued with a backslash
                words = shlex.split(line, comments=True)
                if words and words[0] in ("train", *KEYS):
                    found.append((f"{page.name}: {line.split('#')[0].strip()}", line))
        for span in re.findall(r"`((?:train|predict|evaluate|export-model) [^`]+)`", page.read_text()):
            if not TEMPLATE.search(span):  # a command in a sentence (a usage template is not one)
                found.append((f"{page.name}: {span}", span))
    return sorted(set(found))


COMMANDS = _commands()


def test_the_pages_hold_commands_to_check():
    assert len(COMMANDS) >= 40 and any(c.startswith("README.md") for c, _ in COMMANDS)


@pytest.mark.parametrize("where, line", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_a_command_in_the_docs_is_accepted_as_typed(where, line, monkeypatch):
    words = shlex.split(line, comments=True)
    command, argv = words[0], words[1:]
    if command in KEYS:
        parse_args(argv, KEYS[command], (), "")
        return
    argv = normalize_overrides(argv)
    stray = [a for a in argv if not is_override(a) and a not in FLAGS]
    assert not stray, f"{where}: not a key=value, option or flag: {stray}"
    multirun = any(a in ("-m", "--multirun") for a in argv)
    explain_overrides(with_config_dirs([a for a in argv if is_override(a)], argv), multirun=multirun)


def test_every_link_between_the_pages_leads_somewhere():
    """README's and docs' relative links name files that exist, and their #anchors headings that exist."""
    broken = []
    for page in PAGES + [REPO / "docs" / "config.md"]:
        for target, anchor in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, broken


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")
