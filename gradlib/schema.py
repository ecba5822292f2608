"""The two CSV artifacts' columns, and the rules every reader and writer of them follows.

* **Shapes file** (``fp8_shapes.csv``): ``M,N,K,bias,dtype,outdtype,count,layers``, one row per
  distinct problem; ``layers`` is a ``;``-separated list of the layer names that issued it
  (:mod:`solidx.gradlib.shapes_file`).
* **Tuned file** (``tuned_fp8.csv``): gradlib's ``M,N,K,bias,dtype,outdtype,libtype,solidx,
  soltimems`` then solidx's ``solution,default_ms,speedup,tflops,gbps,max_rel_err,device,
  sm_count,lib_version,torch_version,tuned_at`` (:mod:`solidx.gradlib.tuned_file`).

Reading accepts every historical gradlib variant (``M,N,K``; ``M,N,K,bias,dtype``;
``M,N,K,solidx`` alone; with ``libtype``; ``indtype`` for ``dtype``; ``soltimes`` for
``soltimems``); unknown extra columns are ignored. Anything malformed raises :class:`CsvError`
whose message is ``path:line: column X: what is wrong`` (:mod:`solidx.gradlib.csv_validate`
lists every error of a file). Writes are atomic (temp file + rename) and merges into a shared
file hold a lock (:func:`locked`), so concurrent writers lose and duplicate nothing.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from solidx.gradlib.dtypes import parse_dtype_name
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import LOCK_TIMEOUT_S, lock_file, replace_atomic

if TYPE_CHECKING:
    import torch

PROBLEM_COLUMNS = ("M", "N", "K", "bias", "dtype", "outdtype")
SHAPES_COLUMNS = PROBLEM_COLUMNS + ("count", "layers")
GRADLIB_TUNED_COLUMNS = PROBLEM_COLUMNS + ("libtype", "solidx", "soltimems")
TUNED_COLUMNS = GRADLIB_TUNED_COLUMNS + (
    "solution", "default_ms", "speedup", "tflops", "gbps", "max_rel_err",
    "device", "sm_count", "lib_version", "torch_version", "tuned_at",
)
_RENAMED = {"indtype": "dtype", "soltimes": "soltimems"}


class CsvError(ValueError):
    """A malformed CSV file: ``path:line: column X: what is wrong``."""

    def __init__(self, path: str | os.PathLike, line: int, message: str, column: str | None = None):
        self.path, self.line, self.column, self.reason = str(path), line, column, message
        where = f"column {column}: " if column else ""
        super().__init__(f"{self.path}:{line}: {where}{message}")


# ---------------------------------------------------------------- parsing cells


MAX_DIM = 2**31 - 1  # BLAS libraries index with 32-bit integers
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell


def parse_int(text: str, *, positive: bool = False, nonnegative: bool = False,
              limit: int | None = None) -> int:
    """An integer written as one (``1e3`` and ``4.0`` are refused), optionally bounded."""
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in "+-" else stripped
    if not digits.isdecimal() or not digits.isascii():
        raise ValueError(f"{text!r} is not an integer")
    value = int(stripped)
    if positive and value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    if nonnegative and value < 0:
        raise ValueError(f"{text!r} must not be negative")
    if limit is not None and value > limit:
        raise ValueError(f"{text!r} is larger than {limit}")
    return value


def parse_dim(text: str) -> int:
    """A problem size: a positive integer at most :data:`MAX_DIM`."""
    return parse_int(text, positive=True, limit=MAX_DIM)


def parse_float(text: str) -> float:
    """A number; an empty cell is NaN (not measured)."""
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def parse_measure(text: str) -> float:
    """A measured quantity (a time, a speedup, an error): empty (NaN, not measured) or a finite
    number >= 0; ``nan``, ``inf`` and negative values are refused."""
    value = parse_float(text)
    if text.strip() and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{text!r} must be a finite number >= 0 (or empty)")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (True/False)")


def check_text(value: str) -> str:
    """``value`` unless a spreadsheet would run it as a formula (it starts with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return): then ValueError."""
    if value.startswith(FORMULA_STARTS):
        raise ValueError(f"{value!r} starts with {value[0]!r}: a spreadsheet would run it as a "
                         "formula")
    return value


def parse_text(value: str) -> str:
    return check_text(value.strip())


def format_float(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


# ---------------------------------------------------------------- reading


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CsvError(path, line, "not UTF-8 text") from None


def read_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header (renamed to current names) and each data row as ``(line, {column: cell})``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CsvError(path, 0, "file not found") from None
    text = _decode(path, data)
    if "\x00" in text:
        raise CsvError(path, text[: text.index("\x00")].count("\n") + 1, "contains a NUL byte")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = [_RENAMED.get(c.strip(), c.strip()) for c in cells]
                duplicated = [c for c, n in Counter(header).items() if n > 1 and c]
                if duplicated:
                    raise CsvError(path, line, "appears twice in the header", duplicated[0])
                continue
            if len(cells) > len(header):
                raise CsvError(path, line, f"{len(cells)} cells but the header has {len(header)}")
            rows.append((line, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except csv.Error as exc:
        raise CsvError(path, reader.line_num, f"not valid CSV: {exc}") from None
    if header is None:
        raise CsvError(path, 1, "empty file: expected a header starting with M,N,K")
    for column in ("M", "N", "K"):
        if column not in header:
            raise CsvError(path, 1, f"missing from the header {','.join(header)!r}", column)
    return header, rows


def parse_cell(path: Path, line: int, record: dict[str, str], column: str, parse, default=None):
    if column not in record:
        if default is None:
            raise CsvError(path, line, "missing", column)
        return default
    try:
        return parse(record[column])
    except ValueError as exc:
        raise CsvError(path, line, str(exc), column) from None


def parse_problem(
    path: Path, line: int, record: dict[str, str], dtype: torch.dtype | str,
    outdtype: torch.dtype | str,
) -> GemmProblem:
    """The problem of one row; ``dtype``/``outdtype`` fill in a file without those columns."""
    m = parse_cell(path, line, record, "M", parse_dim)
    n = parse_cell(path, line, record, "N", parse_dim)
    k = parse_cell(path, line, record, "K", parse_dim)
    bias = parse_cell(path, line, record, "bias", _bool, False)
    in_dtype = parse_cell(path, line, record, "dtype", parse_dtype_name, dtype)
    out_dtype = parse_cell(path, line, record, "outdtype", parse_dtype_name, outdtype)
    return GemmProblem(m, n, k, bias, in_dtype, out_dtype)


def raise_first(errors: list[CsvError]) -> None:
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        first = errors[0]
        raise CsvError(first.path, first.line, first.reason + more, first.column)


def is_tuned_file(path: str | os.PathLike) -> bool:
    """Whether a CSV's header is a tuned file's (it has solidx or solution) rather than a shapes
    file's."""
    header, _ = read_records(Path(path))
    return "solidx" in header or "solution" in header


# ---------------------------------------------------------------- writing


def problem_cells(problem: GemmProblem) -> list[str]:
    return [str(problem.M), str(problem.N), str(problem.K), str(problem.bias),
            problem.dtype_name, problem.outdtype_name]


def write_atomic(path: Path, header: Sequence[str], lines: Iterable[list[str]]) -> None:
    """Write a CSV file atomically and safely (:func:`solidx.gradlib.safe_files.replace_atomic`)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    replace_atomic(path, buffer.getvalue().encode())


def problem_sort_key(problem: GemmProblem) -> tuple:
    return (problem.dtype_name, problem.outdtype_name, problem.bias,
            problem.M, problem.K, problem.N)


@contextmanager
def locked(path: str | os.PathLike, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through ``path.lock``) across processes, waiting at
    most ``timeout_s`` (:func:`solidx.gradlib.safe_files.lock_file`)."""
    with lock_file(f"{path}.lock", timeout_s):
        yield


__all__ = [
    "CsvError", "PROBLEM_COLUMNS", "SHAPES_COLUMNS", "GRADLIB_TUNED_COLUMNS", "TUNED_COLUMNS",
    "MAX_DIM", "parse_int", "parse_dim", "parse_float", "parse_measure", "check_text",
    "parse_text", "format_float", "read_records", "parse_cell",
    "parse_problem", "raise_first", "is_tuned_file", "problem_cells", "write_atomic",
    "problem_sort_key", "locked",
]
