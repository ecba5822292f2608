"""``csv validate`` and the loaders refuse what cannot be right (issue 18 item 5, issue 17's
``solidx`` hash rule); the writers never write a formula cell."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from solidx.cli.main import main
from solidx.gradlib.backends import get_backend
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.csv_validate import validate
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.schema import CsvError
from solidx.gradlib.shapes_file import ShapeRow, read_shapes, write_shapes
from solidx.gradlib.tuned_file import TunedRow, read_tuned, write_tuned

HEADER = "M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems,solution,default_ms,device\n"
PROBLEM = "4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16"
DEFAULT = f"default,{spec_hash('default:')},0.01,default:"
FP8_PROBLEM = GemmProblem(4096, 1, 4096, False, torch.float8_e4m3fn, torch.bfloat16)
TRITON = get_backend("triton").solutions(FP8_PROBLEM)[0].spec


def _row(problem: str = PROBLEM, solution: str = DEFAULT, default_ms: str = "0.02",
         device: str = "NVIDIA H200") -> str:
    return f"{problem},{solution},{default_ms},{device}\n"


def _write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "tuned_fp8.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def _errors(path: Path) -> list[str]:
    return [str(e) for e in validate(path)]


def test_a_good_file_is_ok(tmp_path: Path) -> None:
    assert validate(_write(tmp_path, _row())) == []


@pytest.mark.parametrize("solution, message", [
    (f"cublaslt,{spec_hash('cublaslt:id=1')},0.01,cublaslt:id=1",
     "column solution: cannot be built"),
    ("triton,1,0.01,triton:kernel=gemv", "column solidx: 1 is not the hash"),
    (f"triton,{spec_hash('triton:kernel=nope')},0.01,triton:kernel=nope",
     "column solution: cannot be built: not a triton spec"),
    (f"default,{spec_hash('cublaslt:x=1')},0.01,cublaslt:x=1",
     "column solution: cannot be built: spec 'cublaslt:x=1' is of libtype"),
    ("default,7,0.01,default:", "column solidx: 7 is not the hash of solution 'default:'"),
])
def test_specs_that_cannot_be_built_and_the_hash_rule(tmp_path: Path, solution: str,
                                                      message: str) -> None:
    errors = _errors(_write(tmp_path, _row(solution=solution)))
    assert errors and any(f":2: {message}" in e for e in errors), errors


def test_rocm_rows_keep_their_library_index(tmp_path: Path) -> None:
    assert validate(_write(tmp_path, _row(solution="hipblaslt,12345,0.01,"))) == []


def test_a_buildable_triton_spec_passes(tmp_path: Path) -> None:
    row = _row(solution=f'triton,{spec_hash(TRITON)},0.01,"{TRITON}"')
    assert validate(_write(tmp_path, row)) == [], TRITON


def test_duplicate_problems_with_different_solutions(tmp_path: Path) -> None:
    other = "hipblaslt,5,0.01,"
    path = _write(tmp_path, _row(), _row(), _row(solution=other))
    (error,) = validate(path)
    assert error.line == 4 and "appears again (first on line 2) with another solution" in str(error)
    with pytest.raises(CsvError, match=":4: .*appears again"):
        read_tuned(path)


@pytest.mark.parametrize("timing", ["nan", "inf", "-0.5", "-inf"])
def test_bad_timings(tmp_path: Path, timing: str) -> None:
    path = _write(tmp_path, _row(default_ms=timing))
    with pytest.raises(CsvError, match=":2: column default_ms: .*finite number >= 0"):
        read_tuned(path)
    soltime = _row(solution=f"default,{spec_hash('default:')},{timing},default:")
    assert "column soltimems" in _errors(_write(tmp_path, soltime))[0]


@pytest.mark.parametrize("size, message", [
    (str(2**62), "is larger than 2147483647"), ("1e3", "is not an integer"),
    ("4096.0", "is not an integer"), ("0x10", "is not an integer"),
])
def test_sizes_and_integral_floats(tmp_path: Path, size: str, message: str) -> None:
    path = _write(tmp_path, _row(problem=PROBLEM.replace("4096,1,", f"4096,{size},", 1)))
    assert f":2: column N: {size!r} {message}" in _errors(path)[0]
    shapes = tmp_path / "fp8_shapes.csv"
    shapes.write_text(f"M,N,K\n16,{size},32\n")
    with pytest.raises(CsvError, match=f":2: column N: .*{message}"):
        read_shapes(shapes)


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)"])
def test_formula_cells_are_refused_and_never_written(tmp_path: Path, cell: str) -> None:
    path = _write(tmp_path, _row(device=f'"{cell}"'))
    assert ":2: column device: " in _errors(path)[0] and "formula" in _errors(path)[0]
    shapes = tmp_path / "fp8_shapes.csv"
    shapes.write_text(f'M,N,K,layers\n16,1,32,"{cell}"\n')
    with pytest.raises(CsvError, match=":2: column layers: .*formula"):
        read_shapes(shapes)
    with pytest.raises(ValueError, match="formula"):
        write_shapes(tmp_path / "out.csv", [ShapeRow(GemmProblem(16, 1, 32), 1, (cell,))])
    row = TunedRow(GemmProblem(16, 1, 32), "default", spec_hash("default:"), 0.01, "default:",
                   device=cell)
    with pytest.raises(ValueError, match="formula"):
        write_tuned(tmp_path / "out.csv", [row])
    assert not (tmp_path / "out.csv").exists()


def test_cli_validate_exits_1_with_every_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _row(default_ms="nan"), _row(solution="default,7,0.01,default:"))
    result = CliRunner().invoke(main, ["csv", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:2: column default_ms" in result.output
    assert f"{path}:3: column solidx" in result.output


def test_tuned_rows_written_by_the_tuner_validate(tmp_path: Path) -> None:
    row = TunedRow(FP8_PROBLEM, "triton", spec_hash(TRITON), 0.01, TRITON, default_ms=0.02,
                   device="NVIDIA H200")
    write_tuned(tmp_path / "t.csv", [row])
    assert validate(tmp_path / "t.csv") == []
