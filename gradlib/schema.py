"""The two CSV artifacts, read and written in one place.

* **Shapes file** (``fp8_shapes.csv``): ``M,N,K,bias,dtype,outdtype,count,layers``, one row per
  distinct problem; ``layers`` is a ``;``-separated list of the layer names that issued it.
* **Tuned file** (``tuned_fp8.csv``): gradlib's ``M,N,K,bias,dtype,outdtype,libtype,solidx,
  soltimems`` then solidx's ``solution,default_ms,speedup,tflops,gbps,max_rel_err,device,
  sm_count,lib_version,torch_version,tuned_at``.

Reading accepts every historical gradlib variant (``M,N,K``; ``M,N,K,bias,dtype``;
``M,N,K,solidx`` alone; with ``libtype``; ``indtype`` for ``dtype``; ``soltimes`` for
``soltimems``); unknown extra columns are ignored. Anything malformed raises :class:`CsvError`
whose message is ``path:line: column X: what is wrong``. Writes are atomic (temp file + rename)
and merges into a shared file hold a lock, so concurrent writers lose and duplicate nothing.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from solidx.gradlib.backends import LIBTYPES
from solidx.gradlib.dtypes import FP8, dtype_name, parse_dtype
from solidx.gradlib.problem import GemmProblem

PROBLEM_COLUMNS = ("M", "N", "K", "bias", "dtype", "outdtype")
SHAPES_COLUMNS = PROBLEM_COLUMNS + ("count", "layers")
GRADLIB_TUNED_COLUMNS = PROBLEM_COLUMNS + ("libtype", "solidx", "soltimems")
TUNED_COLUMNS = GRADLIB_TUNED_COLUMNS + (
    "solution", "default_ms", "speedup", "tflops", "gbps", "max_rel_err",
    "device", "sm_count", "lib_version", "torch_version", "tuned_at",
)
_RENAMED = {"indtype": "dtype", "soltimes": "soltimems"}
_LIBTYPE_WITHOUT_COLUMN = "hipblaslt"  # gradlib files before the libtype column


class CsvError(ValueError):
    """A malformed CSV file: ``path:line: column X: what is wrong``."""

    def __init__(self, path: str | os.PathLike, line: int, message: str, column: str | None = None):
        self.path, self.line, self.column, self.reason = str(path), line, column, message
        where = f"column {column}: " if column else ""
        super().__init__(f"{self.path}:{line}: {where}{message}")


@dataclass(frozen=True)
class ShapeRow:
    """One distinct problem a model issued, how often, and from which layers."""

    problem: GemmProblem
    count: int = 1
    layers: tuple[str, ...] = ()


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


# ---------------------------------------------------------------- parsing cells


def _int(text: str, *, positive: bool = False, nonnegative: bool = False) -> int:
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


def _float(text: str) -> float:
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


def _libtype(text: str) -> str:
    value = text.strip()
    if value not in LIBTYPES:
        raise ValueError(f"unknown libtype {value!r} (known: {', '.join(LIBTYPES)})")
    return value


def _text(value: str) -> str:
    return value.strip()


def _float_cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


# ---------------------------------------------------------------- reading


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CsvError(path, line, "not UTF-8 text") from None


def _records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
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


def _cell(path: Path, line: int, record: dict[str, str], column: str, parse, default=None):
    if column not in record:
        if default is None:
            raise CsvError(path, line, "missing", column)
        return default
    try:
        return parse(record[column])
    except ValueError as exc:
        raise CsvError(path, line, str(exc), column) from None


def _problem(
    path: Path, line: int, record: dict[str, str], dtype: torch.dtype, outdtype: torch.dtype
) -> GemmProblem:
    m = _cell(path, line, record, "M", lambda t: _int(t, positive=True))
    n = _cell(path, line, record, "N", lambda t: _int(t, positive=True))
    k = _cell(path, line, record, "K", lambda t: _int(t, positive=True))
    bias = _cell(path, line, record, "bias", _bool, False)
    in_dtype = _cell(path, line, record, "dtype", parse_dtype, dtype)
    out_dtype = _cell(path, line, record, "outdtype", parse_dtype, outdtype)
    return GemmProblem(m, n, k, bias, in_dtype, out_dtype)


def parse_shapes(
    path: str | os.PathLike, dtype: torch.dtype = FP8, outdtype: torch.dtype = torch.bfloat16
) -> tuple[list[ShapeRow], list[CsvError]]:
    """Every row of a shapes file and every error found (file-level errors raise at once).

    ``dtype``/``outdtype`` fill in files that lack those columns (gradlib's ``M,N,K``).
    """
    path = Path(path)
    _, records = _records(path)
    rows, errors = [], []
    for line, record in records:
        try:
            problem = _problem(path, line, record, dtype, outdtype)
            count = _cell(path, line, record, "count", lambda t: _int(t, positive=True), 1)
            layers = _cell(path, line, record, "layers", lambda t: tuple(x for x in t.split(";") if x), ())
            rows.append(ShapeRow(problem, count, layers))
        except CsvError as exc:
            errors.append(exc)
    return rows, errors


def parse_tuned(
    path: str | os.PathLike, dtype: torch.dtype = FP8, outdtype: torch.dtype = torch.bfloat16
) -> tuple[list[TunedRow], list[CsvError]]:
    """Every row of a tuned file and every error found (file-level errors raise at once)."""
    path = Path(path)
    header, records = _records(path)
    if "solidx" not in header and "solution" not in header:
        raise CsvError(path, 1, "missing: not a tuned file (a shapes file?)", "solidx")
    rows, errors = [], []
    for line, record in records:
        try:
            problem = _problem(path, line, record, dtype, outdtype)
            libtype = _cell(path, line, record, "libtype", _libtype, _LIBTYPE_WITHOUT_COLUMN)
            solidx = _cell(path, line, record, "solidx", _int, -1)
            soltimems = _cell(path, line, record, "soltimems", _float, math.nan)
            solution = _cell(path, line, record, "solution", _text, "")
            if libtype not in ("hipblaslt", "rocblas") and not solution and libtype != "default":
                raise CsvError(path, line, f"empty for libtype {libtype!r}", "solution")
            row = TunedRow(
                problem, libtype, solidx, soltimems, solution,
                default_ms=_cell(path, line, record, "default_ms", _float, math.nan),
                speedup=_cell(path, line, record, "speedup", _float, math.nan),
                tflops=_cell(path, line, record, "tflops", _float, math.nan),
                gbps=_cell(path, line, record, "gbps", _float, math.nan),
                max_rel_err=_cell(path, line, record, "max_rel_err", _float, math.nan),
                device=_cell(path, line, record, "device", _text, ""),
                sm_count=_cell(path, line, record, "sm_count",
                               lambda t: _int(t, nonnegative=True) if t.strip() else 0, 0),
                lib_version=_cell(path, line, record, "lib_version", _text, ""),
                torch_version=_cell(path, line, record, "torch_version", _text, ""),
                tuned_at=_cell(path, line, record, "tuned_at", _text, ""),
            )
            rows.append(row)
        except CsvError as exc:
            errors.append(exc)
    return rows, errors


def _raise_first(errors: list[CsvError]) -> None:
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        first = errors[0]
        raise CsvError(first.path, first.line, first.reason + more, first.column)


def read_shapes(path: str | os.PathLike, dtype: torch.dtype = FP8,
                outdtype: torch.dtype = torch.bfloat16) -> list[ShapeRow]:
    """The rows of a shapes file; raises CsvError on the first malformed row."""
    rows, errors = parse_shapes(path, dtype, outdtype)
    _raise_first(errors)
    return rows


def read_tuned(path: str | os.PathLike, dtype: torch.dtype = FP8,
               outdtype: torch.dtype = torch.bfloat16) -> list[TunedRow]:
    """The rows of a tuned file; raises CsvError on the first malformed row."""
    rows, errors = parse_tuned(path, dtype, outdtype)
    _raise_first(errors)
    return rows


def is_tuned_file(path: str | os.PathLike) -> bool:
    """Whether a CSV's header is a tuned file's (it has solidx or solution) rather than a shapes file's."""
    header, _ = _records(Path(path))
    return "solidx" in header or "solution" in header


def validate(path: str | os.PathLike) -> list[CsvError]:
    """Every error in a shapes or tuned file (empty when the file is good)."""
    try:
        if is_tuned_file(path):
            return parse_tuned(path)[1]
        return parse_shapes(path)[1]
    except CsvError as exc:
        return [exc]


# ---------------------------------------------------------------- writing


def _problem_cells(problem: GemmProblem) -> list[str]:
    return [str(problem.M), str(problem.N), str(problem.K), str(problem.bias),
            dtype_name(problem.dtype), dtype_name(problem.outdtype)]


def _shape_cells(row: ShapeRow) -> list[str]:
    return _problem_cells(row.problem) + [str(row.count), ";".join(row.layers)]


def _tuned_cells(row: TunedRow) -> list[str]:
    return _problem_cells(row.problem) + [
        row.libtype, str(row.solidx), _float_cell(row.soltimems), row.solution,
        _float_cell(row.default_ms), _float_cell(row.speedup), _float_cell(row.tflops),
        _float_cell(row.gbps), _float_cell(row.max_rel_err), row.device, str(row.sm_count),
        row.lib_version, row.torch_version, row.tuned_at,
    ]


def _write_atomic(path: Path, header: Sequence[str], lines: Iterable[list[str]]) -> None:
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


def write_shapes(path: str | os.PathLike, rows: Iterable[ShapeRow]) -> None:
    """Write a shapes file atomically, rows sorted by (dtype, M, K, N)."""
    ordered = sorted(rows, key=lambda r: _sort_key(r.problem))
    _write_atomic(Path(path), SHAPES_COLUMNS, (_shape_cells(r) for r in ordered))


def write_tuned(path: str | os.PathLike, rows: Iterable[TunedRow]) -> None:
    """Write a tuned file atomically, rows sorted by (device, dtype, M, K, N)."""
    ordered = sorted(rows, key=lambda r: (r.device, r.lib_version, _sort_key(r.problem)))
    _write_atomic(Path(path), TUNED_COLUMNS, (_tuned_cells(r) for r in ordered))


def _sort_key(problem: GemmProblem) -> tuple:
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


# ---------------------------------------------------------------- merging


def merge_shapes(*groups: Iterable[ShapeRow]) -> list[ShapeRow]:
    """One row per distinct problem: counts added, layer names united (in first-seen order)."""
    merged: dict[tuple, ShapeRow] = {}
    for rows in groups:
        for row in rows:
            key = row.problem.key()
            if key in merged:
                old = merged[key]
                layers = old.layers + tuple(x for x in row.layers if x not in old.layers)
                merged[key] = ShapeRow(old.problem, old.count + row.count, layers)
            else:
                merged[key] = row
    return list(merged.values())


def merge_tuned(*groups: Iterable[TunedRow]) -> list[TunedRow]:
    """One row per problem, device and library build; later groups replace earlier ones."""
    merged: dict[tuple, TunedRow] = {}
    for rows in groups:
        for row in rows:
            merged[row.identity()] = row
    return list(merged.values())


def add_to_shapes_file(path: str | os.PathLike, rows: Iterable[ShapeRow]) -> None:
    """Merge rows into the shapes file at ``path`` under its lock (creating it if needed)."""
    with locked(path):
        existing = read_shapes(path) if Path(path).exists() else []
        write_shapes(path, merge_shapes(existing, rows))


def add_to_tuned_file(path: str | os.PathLike, rows: Iterable[TunedRow]) -> None:
    """Merge rows into the tuned file at ``path`` under its lock (creating it if needed)."""
    with locked(path):
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
    unavailable. A ``default`` row needs no library match.
    """
    selection = Selection()
    for row in rows:
        if row.device != device or (row.sm_count and row.sm_count != sm_count):
            selection.skipped[f"for device {row.device or 'unknown'!r}"] += 1
            continue
        if row.libtype != "default":
            running = lib_version(row.libtype)
            if running is None:
                selection.skipped[f"{row.libtype} unavailable"] += 1
                continue
            if row.lib_version != running:
                selection.skipped[f"{row.libtype} build {row.lib_version or 'unknown'!r}"] += 1
                continue
        selection.rows.append(row)
    return selection


__all__ = [
    "CsvError", "ShapeRow", "TunedRow", "Selection", "SHAPES_COLUMNS", "TUNED_COLUMNS",
    "parse_shapes", "parse_tuned", "read_shapes", "read_tuned", "validate", "is_tuned_file",
    "write_shapes", "write_tuned", "merge_shapes", "merge_tuned", "add_to_shapes_file",
    "add_to_tuned_file", "select_rows", "locked",
]
