"""Reading YAML that someone else may have written (a checkpoint's embedded config, a run folder's
``.hydra/config.yaml`` and ``overrides.yaml``, a sweep's files, a teacher checkpoint).

PyYAML shares the nodes an alias points to, but OmegaConf copies them: a few hundred bytes of nested
anchors and aliases (a "billion laughs") become tens of millions of nodes and hang the tool. So such
text is bounded in size and nesting depth, and anchors/aliases are refused, before OmegaConf sees it.
Nothing this tool writes uses anchors: a config it saved reads back unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.errors import UserError

MAX_BYTES = 4 * 1024 * 1024  # a resolved training config is a few KiB
MAX_DEPTH = 64  # ours are under 10 levels deep


_ALIASES = "it uses YAML anchors and aliases (&name, *name), which can expand a few bytes into millions of nodes"


class _Refused(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader without anchors or aliases and with a nesting limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            raise _Refused(_ALIASES)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _Refused(_ALIASES)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"it nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refusal(where: str, why: str) -> UserError:
    return UserError(
        f"{where}: not read, {why}. A config written by this tool has no anchors or aliases, is under "
        f"{MAX_BYTES // (1024 * 1024)} MiB and nests at most {MAX_DEPTH} levels; this one was made elsewhere. "
        "Use a checkpoint or run folder you trained yourself, or remove the file."
    )


def load_yaml(text: str | bytes, where: str) -> Any:
    """Plain Python data (dicts, lists, scalars) from YAML text that may come from anyone; a UserError
    naming ``where`` if it is too large, too deep, uses anchors/aliases or is not YAML."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise _refusal(where, f"it is {len(text):,} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _refusal(where, "it is not UTF-8 text") from None
    if not isinstance(text, str):
        raise _refusal(where, f"it holds a {type(text).__name__}, not YAML text")
    if len(text) > MAX_BYTES:
        raise _refusal(where, f"it is {len(text):,} characters")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise _refusal(where, str(e)) from None
    except yaml.YAMLError as e:
        raise _refusal(where, f"it is not valid YAML ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise _refusal(where, "it nests too deeply") from None
    finally:
        loader.dispose()


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES + 1)  # never more than the limit, whatever the file's size
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}).") from None


def read_yaml(path: Path) -> Any:
    """``load_yaml`` of a file."""
    return load_yaml(_read(path), str(path))


def load_config(text: str | bytes, where: str):
    """An OmegaConf DictConfig from untrusted YAML text (see ``load_yaml``)."""
    from omegaconf import OmegaConf

    data = load_yaml(text, where)
    if not isinstance(data, dict):
        raise _refusal(where, f"it holds a {type(data).__name__}, not a mapping of config keys")
    try:
        return OmegaConf.create(data)
    except Exception as e:  # keys OmegaConf cannot hold (non-string, ...)
        raise _refusal(
            where, f"OmegaConf cannot hold it ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None


def read_config(path: Path):
    """``load_config`` of a file."""
    return load_config(_read(path), str(path))
