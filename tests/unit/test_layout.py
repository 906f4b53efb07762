"""The codebase keeps its shape: small modules and functions, no import cycle, one reader of the config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support import REPO

PACKAGE = REPO / "trainer"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: names for annotations, never run."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    return {id(node) for block in blocks for stmt in block.body for node in ast.walk(stmt)}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """trainer modules that ``name`` imports anywhere in its file (top level or inside functions); an
    import for annotations only (under ``if TYPE_CHECKING:``) is not one."""
    found = set()
    tree = ast.parse(path.read_text())
    type_only = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("trainer"))
    return {m for m in found if m in known and m != name}


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    graph = {name: {d for d in deps if d != "trainer"} for name, deps in graph.items()}  # the package's __init__
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_functions_stay_small():
    """One job per module is the rule for modules; a function fits on a screen."""
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_the_run_reads_no_config_and_the_loop_fits_on_a_screen():
    tree = ast.parse((PACKAGE / "loop" / "run.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }
    assert "cfg" not in names and "DictConfig" not in names and "OmegaConf" not in names
    loop = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_one_epoch")
    assert loop.end_lineno - loop.lineno + 1 <= 45
    readers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "def build_run" in p.read_text()]
    assert readers == ["loop/build.py"]


# Rooms from the bottom up: a module may import its own room and the rooms before it, never one after.
LAYERS = [
    ("trainer", "trainer.errors"),
    ("trainer.config",),
    ("trainer.runs",),
    ("trainer.data", "trainer.models", "trainer.losses", "trainer.metrics", "trainer.distributed"),
    ("trainer.loop",),
    ("trainer.use", "trainer.sweeps"),
    ("trainer.cli", "trainer.__main__"),
]


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _level(module: str) -> int:
    room = _room(module)
    return next(i for i, layer in enumerate(LAYERS) if room in layer or module in layer)


def test_no_room_imports_a_room_above_it():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for dep in _imports(name, path, set(modules)):
            if dep != "trainer" and _room(dep) != _room(name) and _level(dep) > _level(name):
                upward.append(f"{name} imports {dep}")
    assert not upward, upward


def test_the_top_of_the_package_stays_small():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name not in ("__pycache__", "conf"))
    assert len(entries) <= 14, entries
    rooms = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("__pycache__", "conf")]
    for room in rooms:  # each room says what lives there and what may import it
        doc = ast.get_docstring(ast.parse((room / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{room.name}/__init__.py: no docstring naming what may import it"


def test_the_shell_rooms_import_no_torch():
    """`train` answers a mistyped key before torch is imported: cli/ and config/ import no torch at their top."""
    code = (
        "import sys; import trainer.cli.train, trainer.cli.help, trainer.cli.entry, trainer.config.schema, "
        "trainer.config.overrides, trainer.config.targets, trainer.config.untrusted, trainer.runs.resume; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


# what `train` reads itself: its command switches, which say what to do with the built run
COMMAND_SWITCHES = {"resume", "plan", "lr_find", "race"}


def test_build_run_is_the_only_reader_of_a_runs_config():
    """No module but config/ (the schema) and loop/build.py reads or writes a key of the run's config
    (``cfg.x``, ``cfg["x"]``, ``cfg.get("x")``); `train` reads only its command switches."""
    readers = []
    for name, path in _modules().items():
        if name.startswith("trainer.config") or name == "trainer.loop.build":
            continue
        tree = ast.parse(path.read_text())
        switch_of = {  # id of the callee of cfg.get("key") -> key
            id(call.func): call.args[0].value
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.value, ast.Name)):
                continue
            if node.value.id != "cfg":
                continue
            switch = isinstance(node, ast.Attribute) and node.attr == "get" and switch_of.get(id(node))
            if name == "trainer.cli.train" and switch in COMMAND_SWITCHES:
                continue
            readers.append(f"{name}:{node.lineno}")
    assert not readers, readers


def _config_readers(monkeypatch, work) -> set[str]:
    """The package modules that read a key of a config object (DictConfig) while ``work()`` runs: for each
    read, the innermost frame of this package on the stack (a config object passed anywhere and read
    there is found, whatever it is called)."""
    import sys

    from omegaconf import DictConfig

    readers: set[str] = set()
    package = str(PACKAGE) + "/"

    def record(original):
        def read(self, key, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(package):
                frame = frame.f_back
            if frame is not None and not str(key).startswith("_"):
                readers.add(str(Path(frame.f_code.co_filename).relative_to(PACKAGE)))
            return original(self, key, *args, **kwargs)

        return read

    for name in ("__getattr__", "__getitem__", "get"):
        monkeypatch.setattr(DictConfig, name, record(getattr(DictConfig, name)))
    work()
    return readers


def test_only_the_builders_read_a_config_while_a_run_is_built_trained_and_scored(compose_cfg, tmp_path, monkeypatch):
    """The one-reader rule by where config objects flow: while a run is built, trained and its checkpoint
    scored (evaluate's own build), only config/ and loop/build.py read a key."""
    from support import TINY

    from trainer.loop.build import build_parts, build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=1", "data.dataset.train_size=32", "data.dataset.val_size=16")
    scoring = compose_cfg(*TINY, "data.dataset.train_size=32", "data.dataset.val_size=16")

    def work() -> None:
        build_run(cfg, run_dir=tmp_path / "run").fit()
        build_parts(scoring, changes={"resume": None, "trainer.device": "cpu"}).evaluate()

    readers = _config_readers(monkeypatch, work)
    assert readers and all(r.startswith("config/") or r == "loop/build.py" for r in readers), sorted(readers)
