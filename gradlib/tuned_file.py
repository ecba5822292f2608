"""The tuned file (``tuned_fp8.csv``): the chosen solution of each problem on each device and
library build; read, written, merged, and the rows that apply to one GPU selected. Columns and
reading rules: :mod:`solidx.gradlib.schema`.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from solidx.gradlib.backends import LIBTYPES
from solidx.gradlib.dtypes import BF16_NAME, FP8_NAME
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import check_target
from solidx.gradlib.schema import (
    TUNED_COLUMNS, CsvError, check_text, format_float, locked, parse_cell, parse_int,
    parse_measure,
    parse_problem, parse_text, problem_cells, problem_sort_key, raise_first, read_records,
    write_atomic,
)

if TYPE_CHECKING:
    import torch

_LIBTYPE_WITHOUT_COLUMN = "hipblaslt"  # gradlib files before the libtype column
_INDEXED = ("hipblaslt", "rocblas")  # libtypes whose solidx is the library's solution index


@dataclass(frozen=True)
class TunedRow:
    """The chosen solution of one problem on one device and library build."""

    problem: GemmProblem
    libtype: str
    solidx: int
    soltimems: float
    solution: str = ""
    default_ms: float = math.nan
    speedup: float = math.nan
    tflops: float = math.nan
    gbps: float = math.nan
    max_rel_err: float = math.nan
    device: str = ""
    sm_count: int = 0
    lib_version: str = ""
    torch_version: str = ""
    tuned_at: str = ""

    def identity(self) -> tuple:
        """Rows with the same identity describe the same problem on the same build."""
        return (self.problem.key(), self.device, self.sm_count, self.lib_version)


def _libtype(text: str) -> str:
    value = text.strip()
    if value not in LIBTYPES:
        raise ValueError(f"unknown libtype {value!r} (known: {', '.join(LIBTYPES)})")
    return value


def parse_tuned(
    path: str | os.PathLike, dtype: torch.dtype | str = FP8_NAME,
    outdtype: torch.dtype | str = BF16_NAME,
) -> tuple[list[TunedRow], list[CsvError]]:
    """Every row of a tuned file and every error found (file-level errors raise at once)."""
    path = Path(path)
    header, records = read_records(path)
    if "solidx" not in header and "solution" not in header:
        raise CsvError(path, 1, "missing: not a tuned file (a shapes file?)", "solidx")
    rows, errors = [], []
    seen: dict[tuple, tuple[int, TunedRow]] = {}
    for line, record in records:
        try:
            problem = parse_problem(path, line, record, dtype, outdtype)
            libtype = parse_cell(path, line, record, "libtype", _libtype, _LIBTYPE_WITHOUT_COLUMN)
            solidx = parse_cell(path, line, record, "solidx", parse_int, -1)
            soltimems = parse_cell(path, line, record, "soltimems", parse_measure, math.nan)
            solution = parse_cell(path, line, record, "solution", parse_text, "")
            if libtype in _INDEXED and not solution:  # ROCm's gradlib: the index alone
                solution = f"{libtype}:index={solidx}"
            if not solution and libtype != "default":
                raise CsvError(path, line, f"empty for libtype {libtype!r}", "solution")
            row = TunedRow(
                problem, libtype, solidx, soltimems, solution,
                default_ms=parse_cell(path, line, record, "default_ms", parse_measure, math.nan),
                speedup=parse_cell(path, line, record, "speedup", parse_measure, math.nan),
                tflops=parse_cell(path, line, record, "tflops", parse_measure, math.nan),
                gbps=parse_cell(path, line, record, "gbps", parse_measure, math.nan),
                max_rel_err=parse_cell(path, line, record, "max_rel_err", parse_measure,
                                       math.nan),
                device=parse_cell(path, line, record, "device", parse_text, ""),
                sm_count=parse_cell(path, line, record, "sm_count",
                               lambda t: parse_int(t, nonnegative=True) if t.strip() else 0, 0),
                lib_version=parse_cell(path, line, record, "lib_version", parse_text, ""),
                torch_version=parse_cell(path, line, record, "torch_version", parse_text, ""),
                tuned_at=parse_cell(path, line, record, "tuned_at", parse_text, ""),
            )
            _check_duplicate(path, line, row, seen)
            rows.append(row)
        except CsvError as exc:
            errors.append(exc)
    return rows, errors


def _check_duplicate(path: Path, line: int, row: TunedRow,
                     seen: dict[tuple, tuple[int, TunedRow]]) -> None:
    """Refuse a second row of the same problem and build that chose another solution."""
    first = seen.setdefault(row.identity(), (line, row))
    if first[0] == line:
        return
    old = first[1]
    if (old.libtype, old.solution, old.solidx) != (row.libtype, row.solution, row.solidx):
        raise CsvError(path, line, f"{row.problem} appears again (first on line {first[0]}) "
                       f"with another solution ({old.libtype} {old.solution or old.solidx} vs "
                       f"{row.libtype} {row.solution or row.solidx})")


def read_tuned(path: str | os.PathLike, dtype: torch.dtype | str = FP8_NAME,
               outdtype: torch.dtype | str = BF16_NAME) -> list[TunedRow]:
    """The rows of a tuned file; raises CsvError on the first malformed row."""
    rows, errors = parse_tuned(path, dtype, outdtype)
    raise_first(errors)
    return rows


def _tuned_cells(row: TunedRow) -> list[str]:
    return problem_cells(row.problem) + [
        row.libtype, str(row.solidx), format_float(row.soltimems), check_text(row.solution),
        format_float(row.default_ms), format_float(row.speedup), format_float(row.tflops),
        format_float(row.gbps), format_float(row.max_rel_err), check_text(row.device),
        str(row.sm_count), check_text(row.lib_version), check_text(row.torch_version),
        check_text(row.tuned_at),
    ]


def write_tuned(path: str | os.PathLike, rows: Iterable[TunedRow]) -> None:
    """Write a tuned file atomically, rows sorted by (device, dtype, M, K, N)."""
    ordered = sorted(rows, key=lambda r: (r.device, r.lib_version, problem_sort_key(r.problem)))
    write_atomic(Path(path), TUNED_COLUMNS, (_tuned_cells(r) for r in ordered))


def merge_tuned(*groups: Iterable[TunedRow]) -> list[TunedRow]:
    """One row per problem, device and library build; later groups replace earlier ones."""
    merged: dict[tuple, TunedRow] = {}
    for rows in groups:
        for row in rows:
            merged[row.identity()] = row
    return list(merged.values())


def add_to_tuned_file(path: str | os.PathLike, rows: Iterable[TunedRow]) -> None:
    """Merge rows into the tuned file at ``path`` under its lock (creating it if needed)."""
    with locked(path):
        check_target(Path(path))  # not read through a link we will not write through
        existing = read_tuned(path) if Path(path).exists() else []
        write_tuned(path, merge_tuned(existing, rows))


@dataclass
class Selection:
    """The tuned rows that apply to one GPU and library build, and why the others did not."""

    rows: list[TunedRow] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        skipped = sum(self.skipped.values())
        return f"{len(self.rows)} rows loaded, {skipped} skipped" + (f" ({why})" if why else "")


def select_rows(
    rows: Iterable[TunedRow], device: str, sm_count: int, lib_version: Callable[[str], str | None]
) -> Selection:
    """Keep the rows tuned on this device (name and SM count) with this library build.

    ``lib_version(libtype)`` gives the running build of a backend, or None where it is
    unavailable. A ``default`` row needs no library match. A row of ROCm's gradlib (no device,
    no build: a hipblaslt/rocblas solution index) applies to any device and build; its index is
    checked against the running library when its solution is built.
    """
    selection = Selection()
    for row in rows:
        rocm_gradlib = row.libtype in _INDEXED and not row.device and not row.lib_version
        if not rocm_gradlib and (
                row.device != device or (row.sm_count and row.sm_count != sm_count)):
            selection.skipped[f"for device {row.device or 'unknown'!r}"] += 1
            continue
        if row.libtype != "default":
            running = lib_version(row.libtype)
            if running is None:
                selection.skipped[f"{row.libtype} unavailable"] += 1
                continue
            if row.lib_version != running and not rocm_gradlib:
                selection.skipped[f"{row.libtype} build {row.lib_version or 'unknown'!r}"] += 1
                continue
        selection.rows.append(row)
    return selection


__all__ = [
    "TunedRow", "Selection", "parse_tuned", "read_tuned", "write_tuned", "merge_tuned",
    "add_to_tuned_file", "select_rows",
]
