"""trainer.errors: the one table of exit codes, and the wrapper every console command runs under."""

from __future__ import annotations

import errno
import re
import signal
from pathlib import Path

import pytest
from support import REPO

from trainer.errors import Exit, UserError, exit_code_of, run_console_command
from trainer.loop.interrupt import RunInterrupted
from trainer.runs.checkpoint import storage_error


def test_each_kind_of_ending_has_its_code():
    assert exit_code_of(UserError("x")) == 2
    assert exit_code_of(storage_error(OSError(errno.ENOSPC, "No space left"), Path("run"))) == 4
    assert exit_code_of(storage_error(OSError(errno.EROFS, "Read-only"), Path("run"))) == 2
    assert exit_code_of(RunInterrupted(signal.SIGTERM, 0, 3, Path("run"))) == 128 + 15
    assert exit_code_of(KeyboardInterrupt()) == 130
    assert exit_code_of(RuntimeError("a bug")) == 1


def _ending(body, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        run_console_command(body, "interrupted, nothing lost.")
    return e.value.code, capsys.readouterr().err


def test_the_wrapper_prints_one_paragraph_and_exits_with_the_code(capsys):
    def mistake():
        raise UserError("data.root=/nope: no such folder.")

    def ctrl_c():
        raise KeyboardInterrupt

    assert _ending(mistake, capsys) == (2, "error: data.root=/nope: no such folder.\n")
    assert _ending(ctrl_c, capsys) == (130, "interrupted, nothing lost.\n")


def test_an_unexpected_error_keeps_its_traceback():
    def bug():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_console_command(bug, "")


def test_the_readme_table_is_the_table():
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+(?: \+ N)?) \| (.+?) \|$", readme, re.M))
    assert set(rows) == {str(int(code)) for code in Exit} | {"128 + N"}
