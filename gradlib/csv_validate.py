"""Every error in a shapes or tuned file, whichever of the two it is.

At least as strict as the loaders (everything :func:`solidx.gradlib.tuned_file.parse_tuned` and
:func:`solidx.gradlib.shapes_file.parse_shapes` refuse), and for tuned files also:

* the ``solidx`` rule: for backends other than hipBLASLt and rocBLAS, ``solidx`` is the stable
  31-bit hash of ``solution`` (:func:`solidx.gradlib.backends.base.spec_hash`);
* every ``solution`` can be built for its problem, as far as that is known without a GPU: the
  default's and Triton's specs are checked as their backends' ``from_spec`` checks them (the
  Triton config against the problem), cuBLASLt's against its spec grammar, ROCm's against the
  general ``libtype:k=v,...`` grammar.

Imports no torch: the checks use the backends' torch-free spec modules.
"""
from __future__ import annotations

import os
from pathlib import Path

from solidx.gradlib.backends import default_spec
from solidx.gradlib.backends.base import parse_spec, spec_hash
from solidx.gradlib.backends.cublaslt_configs import AlgoConfig
from solidx.gradlib.backends.triton_configs import checked_config
from solidx.gradlib.dtypes import BF16_NAME, FP8_NAME
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.schema import CsvError, is_tuned_file, parse_int, parse_problem, read_records
from solidx.gradlib.shapes_file import parse_shapes
from solidx.gradlib.tuned_file import parse_tuned

INDEXED_LIBTYPES = ("hipblaslt", "rocblas")  # solidx is the library's own solution index


def spec_error(libtype: str, spec: str, problem: GemmProblem) -> str | None:
    """Why ``spec`` (of a ``libtype`` row) cannot be built for ``problem``, or None."""
    try:
        kind, _ = parse_spec(spec)
        if kind != libtype:
            return f"spec {spec!r} is of libtype {kind!r}, the row's libtype is {libtype!r}"
        if libtype == "default":
            default_spec.check_spec(spec)
        elif libtype == "triton":
            checked_config(spec, problem)
        elif libtype == "cublaslt":
            AlgoConfig.parse(spec)
    except ValueError as exc:
        return str(exc)
    return None


def _row_errors(path: Path, line: int, record: dict[str, str]) -> list[CsvError]:
    """The hash rule and the spec check of one well-formed tuned row."""
    problem = parse_problem(path, line, record, FP8_NAME, BF16_NAME)
    libtype = record.get("libtype", "hipblaslt").strip()
    spec = record.get("solution", "").strip()
    if not spec:
        return []
    errors = []
    if libtype not in INDEXED_LIBTYPES and "solidx" in record:
        expected = spec_hash(spec)
        if parse_int(record["solidx"]) != expected:
            errors.append(CsvError(
                path, line, f"{record['solidx'].strip()} is not the hash of solution {spec!r}: "
                f"for libtype {libtype!r} it must be spec_hash(solution) = {expected}", "solidx"))
    reason = spec_error(libtype, spec, problem)
    if reason:
        errors.append(CsvError(path, line, f"cannot be built: {reason}", "solution"))
    return errors


def _tuned_errors(path: Path) -> list[CsvError]:
    errors = parse_tuned(path)[1]
    bad_lines = {e.line for e in errors}
    _, records = read_records(path)
    for line, record in records:
        if line not in bad_lines:
            errors.extend(_row_errors(path, line, record))
    return sorted(errors, key=lambda e: (e.line, e.column or ""))


def validate(path: str | os.PathLike) -> list[CsvError]:
    """Every error in a shapes or tuned file (empty when the file is good)."""
    try:
        if is_tuned_file(path):
            return _tuned_errors(Path(path))
        return parse_shapes(path)[1]
    except CsvError as exc:
        return [exc]
    except OSError as exc:
        return [CsvError(path, 0, f"cannot be read: {exc.strerror or exc}")]


__all__ = ["INDEXED_LIBTYPES", "spec_error", "validate"]
