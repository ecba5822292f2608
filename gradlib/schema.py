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
import fcntl
import io
import math
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from solidx.gradlib.dtypes import dtype_name, parse_dtype
from solidx.gradlib.problem import GemmProblem

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


def parse_int(text: str, *, positive: bool = False, nonnegative: bool = False) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        try:
            as_float = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not as_float.is_integer():
            raise ValueError(f"{text!r} is not an integer") from None
        value = int(as_float)
    if positive and value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    if nonnegative and value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def parse_float(text: str) -> float:
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (True/False)")


def parse_text(value: str) -> str:
    return value.strip()


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
    path: Path, line: int, record: dict[str, str], dtype: torch.dtype, outdtype: torch.dtype
) -> GemmProblem:
    m = parse_cell(path, line, record, "M", lambda t: parse_int(t, positive=True))
    n = parse_cell(path, line, record, "N", lambda t: parse_int(t, positive=True))
    k = parse_cell(path, line, record, "K", lambda t: parse_int(t, positive=True))
    bias = parse_cell(path, line, record, "bias", _bool, False)
    in_dtype = parse_cell(path, line, record, "dtype", parse_dtype, dtype)
    out_dtype = parse_cell(path, line, record, "outdtype", parse_dtype, outdtype)
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
            dtype_name(problem.dtype), dtype_name(problem.outdtype)]


def write_atomic(path: Path, header: Sequence[str], lines: Iterable[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def problem_sort_key(problem: GemmProblem) -> tuple:
    return (dtype_name(problem.dtype), dtype_name(problem.outdtype), problem.bias,
            problem.M, problem.K, problem.N)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through ``path.lock``) across processes."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = [
    "CsvError", "PROBLEM_COLUMNS", "SHAPES_COLUMNS", "GRADLIB_TUNED_COLUMNS", "TUNED_COLUMNS",
    "parse_int", "parse_float", "parse_text", "format_float", "read_records", "parse_cell",
    "parse_problem", "raise_first", "is_tuned_file", "problem_cells", "write_atomic",
    "problem_sort_key", "locked",
]
