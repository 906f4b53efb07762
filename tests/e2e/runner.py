"""Runs of the real commands for the end-to-end tests.

``train(args, cwd)`` runs the real `train` command. A single run goes through the command's
``main()`` inside the test's own process, because an interpreter start and its imports cost seconds
per run on a small CPU; to make that equal to a real process, ``_run_main`` gives the command its own
argv, working folder, environment, sys.path, logging handlers and signal handlers, catches its
``SystemExit`` as a return code, captures its output like a pipe, refuses ``os.exec*`` (a run that
would hand over to torchrun is rerun as a subprocess instead), and puts every one of those back
afterwards, threads included. Sweeps, torchrun launches, compiled runs and runs with their own
environment are real subprocesses (``python -m trainer``), and so is every run under
``TRAINER_TEST_SUBPROCESS=1``; ``test_a_run_inside_the_test_process_equals_the_real_command`` holds
the two ways to the same result.

``in_process(module, args, cwd)`` does the same for `predict`, `evaluate` and `export-model`;
``start_train`` starts a real process to signal or kill; ``interrupt_and_resume`` stops a built run
with SIGTERM after a number of batches and resumes it from its last.pt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import HANG_GUARD, REPO, offline_env


def train(
    args: list[str], cwd: Path, timeout: float = HANG_GUARD, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `train` command in ``cwd`` (``env``: added variables). A single run goes through the
    command's ``main()`` inside the test's own process (an interpreter start and its imports cost
    seconds per run on a small CPU); sweeps, torchrun launches, compiled runs and runs with their own
    environment are real subprocesses (``python -m trainer``), as is every run under TRAINER_TEST_SUBPROCESS=1."""
    from trainer.cli import train as cli

    proc = _run_main(cli.main, str(REPO / "trainer" / "__main__.py"), args, cwd) if _in_process_ok(args, env) else None
    if proc is None:  # or the run went on to start torchrun (trainer.devices came with a resumed run)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "trainer", *args],
                cwd=cwd,
                env={**offline_env(cwd), **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-3000:]
            pytest.fail(f"train {' '.join(args)} hung: no exit after {timeout:.0f}s. Last output:\n{tail!r}")
    if check and proc.returncode != 0:
        raise AssertionError(f"train {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _in_process_ok(args: list[str], env: dict[str, str] | None) -> bool:
    own_process = ("-m", "--multirun", "trainer.devices=", "trainer.compile=")
    return (
        not env
        and os.environ.get("TRAINER_TEST_SUBPROCESS") != "1"
        and not any(a == k or a.startswith(k) for a in args for k in own_process)
    )


class _Exec(Exception):
    """Raised in place of os.execv: the run hands over to another program (torchrun)."""


def _refuse_exec(*_: object) -> None:
    raise _Exec


@contextlib.contextmanager
def _as_a_process(argv0: str, args: list[str], cwd: Path):
    """Run a command's ``main()`` here as ``python -m`` would in ``cwd``, then put back what it changed:
    argv, cwd, environment, import path and the user's own modules, logging, torch's thread count,
    Hydra's global state, and the data workers and threads it left (stopped, as exit stops them)."""
    import gc
    import logging
    import multiprocessing
    import threading

    from hydra.core.global_hydra import GlobalHydra

    from trainer.runs import failpoints

    saved_env, saved_path, saved_modules = dict(os.environ), list(sys.path), set(sys.modules)
    children, threads_before = set(multiprocessing.active_children()), set(threading.enumerate())
    argv, here, threads, raises = sys.argv, os.getcwd(), torch.get_num_threads(), logging.raiseExceptions
    loggers = {name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for name, lg in _all_loggers()}
    try:
        os.environ.update({k: v for k, v in offline_env(cwd).items() if k != "PYTHONPATH"})
        sys.path.insert(0, str(cwd))
        sys.argv = [argv0, *args]
        os.chdir(cwd)
        failpoints._counts.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "execv", _refuse_exec)
            yield
    finally:
        for child in set(multiprocessing.active_children()) - children:  # what exit does to a run's data workers
            child.terminate()
            child.join()
        gc.collect()  # a finished run's loaders, their queues and threads go now, as they would at exit
        for thread in set(threading.enumerate()) - threads_before:
            if thread.name == "QueueFeederThread":  # a closed queue's feeder ends by itself soon; a hang guard
                thread.join(timeout=60)
        for name, lg in _all_loggers():
            for h in set(lg.handlers) - set(loggers.get(name, ([],))[0]):
                h.close()
            lg.handlers[:], lg.level, lg.propagate, lg.disabled = loggers.get(name, ([], logging.NOTSET, True, False))
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if str(cwd) in str(getattr(sys.modules[name], "__file__", None)):
                del sys.modules[name]
        sys.argv = argv
        os.chdir(here)
        torch.set_num_threads(threads)
        logging.raiseExceptions = raises
        GlobalHydra.instance().clear()


def _run_main(main, argv0: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    """``main()`` under :func:`_as_a_process` with its output captured; None when it would exec another program."""
    import io
    import traceback

    from trainer.cli.entry import _exit_code

    out, err, code = io.StringIO(), io.StringIO(), 0
    with _as_a_process(argv0, args, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = _exit_code(e.code)
        except _Exec:
            return None
        except Exception:
            traceback.print_exc()  # what an uncaught exception prints, and exit status 1
            code = 1
    return subprocess.CompletedProcess([argv0, *args], code, out.getvalue(), err.getvalue())


def _all_loggers():
    import logging

    yield "", logging.getLogger()
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            yield name, lg


def in_process(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m trainer.use.<module> args`` (predict, evaluate, export) run inside the test's own process:
    the command's behaviour without an interpreter start and its seconds of imports. Each command's real
    entry point is still run as a subprocess by at least one test."""
    import importlib

    return _run_main(importlib.import_module(f"trainer.use.{module}").main, f"trainer.use.{module}", args, cwd)


def python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` as its own process in ``cwd``, offline, its output captured (a script, or ``-c``)."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=offline_env(cwd), timeout=HANG_GUARD
    )


def ctrl_c_reaches_it() -> None:
    """For a child's ``preexec_fn``: SIGINT as a terminal delivers it. A suite started in the background
    by a shell without job control (``cmd &`` in a script) has SIGINT ignored, and a child inherits
    that; Python then installs no KeyboardInterrupt handler, and a test of Ctrl-C would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_train(args: list[str], cwd: Path, output: bool = False, **popen: object) -> subprocess.Popen:
    """Start the real `train` command without waiting; ``output``: its stdout+stderr as text, else discarded."""
    streams = (
        {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        if output
        else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    )
    popen.setdefault("preexec_fn", ctrl_c_reaches_it)
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=cwd, env=offline_env(cwd), **streams, **popen)


def kill_after_first_checkpoint(args: list[str], cwd: Path) -> Path:
    """Start `train`, SIGKILL it as soon as it has written a checkpoint; return the run folder."""
    proc = start_train(args, cwd)
    deadline = time.time() + HANG_GUARD
    found = []
    while time.time() < deadline and proc.poll() is None:
        found = list(cwd.glob("outputs/**/checkpoints/last.pt"))
        if found:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return found[0].parent.parent


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until ``path`` exists or the process ended (a hang guard, not a speed check)."""
    import time

    deadline = time.time() + HANG_GUARD
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.01)


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"ema.{k}": v for k, v in (ckpt.get("ema") or {}).items()})
    for pid, st in ckpt["optimizer"]["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"optim.{pid}.{k}"] = v
    return out


def interrupt_and_resume(cfg, folder, at_call):
    """In-process: SIGTERM-stop a run after ``at_call`` batches, resume it from last.pt, return final tensors."""
    from trainer.loop.build import build_run
    from trainer.loop.interrupt import RunInterrupted

    first = build_run(cfg, run_dir=folder)
    calls = {"n": 0}
    loss = first.loss_fn

    def stop_later(out, y):
        calls["n"] += 1
        if calls["n"] == at_call:
            first.guard.request(signal.SIGTERM)
        return loss(out, y)

    first.loss_fn = stop_later
    with pytest.raises(RunInterrupted):
        first.fit()
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["batch_in_epoch"] > 0
    build_run(resume_cfg(cfg, folder), run_dir=folder).fit()
    return final_tensors(folder)


def resume_cfg(cfg, folder):
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, {"resume": str(folder / "checkpoints" / "last.pt")})
