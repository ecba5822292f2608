"""The shapes file (``fp8_shapes.csv``): one row per distinct problem a model issued, how often,
and from which layers; read, written, merged. Columns and reading rules:
:mod:`solidx.gradlib.schema`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from solidx.gradlib.dtypes import BF16_NAME, FP8_NAME
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import check_target
from solidx.gradlib.schema import (
    SHAPES_COLUMNS, CsvError, check_text, locked, parse_cell, parse_int, parse_problem,
    problem_cells, problem_sort_key, raise_first, read_records, write_atomic,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ShapeRow:
    """One distinct problem a model issued, how often, and from which layers."""

    problem: GemmProblem
    count: int = 1
    layers: tuple[str, ...] = ()


def parse_shapes(
    path: str | os.PathLike, dtype: torch.dtype | str = FP8_NAME,
    outdtype: torch.dtype | str = BF16_NAME,
) -> tuple[list[ShapeRow], list[CsvError]]:
    """Every row of a shapes file and every error found (file-level errors raise at once).

    ``dtype``/``outdtype`` fill in files that lack those columns (gradlib's ``M,N,K``).
    """
    path = Path(path)
    _, records = read_records(path)
    rows, errors = [], []
    for line, record in records:
        try:
            problem = parse_problem(path, line, record, dtype, outdtype)
            count = parse_cell(path, line, record, "count",
                               lambda t: parse_int(t, positive=True), 1)
            layers = parse_cell(path, line, record, "layers", _layers, ())
            rows.append(ShapeRow(problem, count, layers))
        except CsvError as exc:
            errors.append(exc)
    return rows, errors


def _layers(text: str) -> tuple[str, ...]:
    return tuple(x for x in check_text(text.strip()).split(";") if x)


def read_shapes(path: str | os.PathLike, dtype: torch.dtype | str = FP8_NAME,
                outdtype: torch.dtype | str = BF16_NAME) -> list[ShapeRow]:
    """The rows of a shapes file; raises CsvError on the first malformed row."""
    rows, errors = parse_shapes(path, dtype, outdtype)
    raise_first(errors)
    return rows


def _shape_cells(row: ShapeRow) -> list[str]:
    return problem_cells(row.problem) + [str(row.count), check_text(";".join(row.layers))]


def write_shapes(path: str | os.PathLike, rows: Iterable[ShapeRow]) -> None:
    """Write a shapes file atomically, rows sorted by (dtype, M, K, N)."""
    ordered = sorted(rows, key=lambda r: problem_sort_key(r.problem))
    write_atomic(Path(path), SHAPES_COLUMNS, (_shape_cells(r) for r in ordered))


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


def add_to_shapes_file(path: str | os.PathLike, rows: Iterable[ShapeRow]) -> None:
    """Merge rows into the shapes file at ``path`` under its lock (creating it if needed)."""
    with locked(path):
        check_target(Path(path))  # not read through a link we will not write through
        existing = read_shapes(path) if Path(path).exists() else []
        write_shapes(path, merge_shapes(existing, rows))


__all__ = [
    "ShapeRow", "parse_shapes", "read_shapes", "write_shapes", "merge_shapes",
    "add_to_shapes_file",
]
