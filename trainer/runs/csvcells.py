"""CSV files a spreadsheet opens safely (OWASP's CSV-injection advice): a text cell that starts like a
formula (``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written with a ``'`` in front, and
so is one that starts with ``'`` itself, so that removing one leading ``'`` (:func:`read_cell`) gives
back every original exactly. Numbers, and text that reads as a number (``-0.5``), are written as they are."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutral(value: Any) -> Any:
    """The cell as written: text that a spreadsheet would run as a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def read_cell(cell: str) -> str:
    """The original text of a cell of one of our CSVs (one leading ``'`` removed)."""
    return cell[1:] if cell.startswith("'") else cell


class SafeWriter:
    """``csv.writer`` whose text cells are :func:`neutral`."""

    def __init__(self, f: IO[str]) -> None:
        self.inner = csv.writer(f)

    def writerow(self, row: Iterable[Any]) -> None:
        self.inner.writerow([neutral(c) for c in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class SafeDictWriter(csv.DictWriter):
    """``csv.DictWriter`` whose text cells, the header's included (``writeheader`` writes through
    ``writerow``), are :func:`neutral`."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: neutral(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for row in rowdicts:
            self.writerow(row)
