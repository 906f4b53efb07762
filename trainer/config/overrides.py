"""Reading what the user typed before Hydra does: ``~`` paths, values to quote, words the shell split
off, grammar errors, the first value of each sweep, and ``--config-dir`` as a search path.

Only Hydra's parser is imported here: no torch.
"""

from __future__ import annotations

from trainer.errors import UserError

_GRAMMAR = set("[]{}(),'\"=$\\")


# Hydra's flags that take the next argument as their value
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
VALUE_FLAGS |= {"--experimental-rerun"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _takes_value(flag: str, arg: str) -> bool:
    return flag in VALUE_FLAGS or (flag in ("--info", "-i") and arg in INFO_VALUES)


def normalize_overrides(args: list[str]) -> list[str]:
    """Overrides as Hydra's grammar reads them, or one paragraph saying what to type.

    ``~`` at the start of a value is the home folder (as the shell would expand it); a plain string
    the grammar refuses only for its characters (non-ASCII, inner spaces, ``@``...) is quoted for
    Hydra; a word without ``=`` (a path split by the shell at a space) and a real grammar error
    (``optimizer.lr=[``) are explained."""
    import os

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("-") or (i > 0 and _takes_value(args[i - 1], arg)):
            out.append(arg)
            continue
        if "=" not in arg and not arg.startswith("~"):
            at = next((j for j in range(i - 1, -1, -1) if "=" in args[j]), None)
            before = args[at] if at is not None else None
            words = [before or ""]
            for a in args[(at or 0) + 1 :]:
                if "=" in a or a.startswith("-"):
                    break
                words.append(a)
            hint = (
                f"If it belongs to the value before it (a path with spaces), quote the whole override "
                f"for the shell: '{' '.join(words)}'."
                if before
                else "Write overrides as key=value, e.g. trainer.epochs=3."
            )
            raise UserError(f"{arg!r} is not a key=value override. {hint}")
        key, eq, value = arg.partition("=")
        if value == "~" or value.startswith("~/"):
            value = os.path.expanduser(value)
        arg = key + eq + value
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            if value and not (_GRAMMAR & set(value)):
                arg = f"{key}={_hydra_quote(value)}"  # a plain string: quote it for Hydra
            else:
                first = str(e).strip().splitlines()[0]
                raise UserError(
                    f"cannot read the override {arg!r} ({first}). Hydra reads values with a grammar: lists "
                    "as [a,b], dicts as {k: v}; a value with brackets, commas, quotes or spaces must be "
                    f"quoted for Hydra inside quotes for the shell, e.g. \"{key}='...'\". Grammar: "
                    "https://hydra.cc/docs/advanced/override_grammar/basic/"
                ) from None
        out.append(arg)
    return out


def with_config_dirs(overrides: list[str], argv: list[str]) -> list[str]:
    """``overrides`` with the folders of ``--config-dir`` (``-cd``) added to ``hydra.searchpath``, so
    that checking and composing here see the user's own options as Hydra's run will."""
    import os

    dirs = []
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
    if not dirs:
        return overrides
    rest = [o for o in overrides if key_of(o) != "hydra.searchpath"]
    paths = searchpath(overrides) + [f"file://{os.path.abspath(os.path.expanduser(d))}" for d in dirs]
    return [*rest, "hydra.searchpath=[" + ",".join(_hydra_quote(p) for p in paths) + "]"]


def searchpath(overrides: list[str]) -> list[str]:
    """The entries a ``hydra.searchpath=[...]`` override gives (``file://...``, ``pkg://...``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    paths: list[str] = []
    for o in overrides:
        if key_of(o) == "hydra.searchpath":
            value = OverridesParser.create().parse_overrides([o])[0].value()
            paths += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return paths


def _hydra_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_interval(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    return isinstance(OverridesParser.create().parse_overrides([override])[0].value(), IntervalSweep)


def first_value(override: str) -> str | None:
    """A sweep override with its first choice (None for a search interval, which has no first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override():
        return override
    value = parsed.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        first = next(iter(parsed.sweep_string_iterator()), None)
        if first is not None:
            return f"{override.split('=', 1)[0]}={first}"
    return None


def key_of(override: str) -> str:
    """The key of ``key=value`` (``+key=``, ``~key`` and ``++key=`` included)."""
    return override.split("=", 1)[0].lstrip("+~")


def value_of(override: str) -> str:
    """The value of ``key=value``, unquoted."""
    return override.split("=", 1)[1].strip().strip("'\"") if "=" in override else ""


def quote(value: str) -> str:
    """A value quoted for Hydra's override grammar."""
    return f"'{value}'" if "'" not in value else f'"{value}"'


def is_override(arg: str) -> bool:
    """``key=value`` or ``~key``, not a flag."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))
