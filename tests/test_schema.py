"""The CSV artifacts: round trips, every gradlib variant, exact errors, fuzzing, concurrency."""
from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solidx.gradlib.csv_validate import validate
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.schema import TUNED_COLUMNS, CsvError
from solidx.gradlib.shapes_file import (
    ShapeRow, add_to_shapes_file, merge_shapes, read_shapes, write_shapes,
)
from solidx.gradlib.tuned_file import (
    TunedRow, add_to_tuned_file, read_tuned, select_rows, write_tuned,
)

FP8 = torch.float8_e4m3fn


def tuned_row(m: int = 4096, n: int = 1, device: str = "NVIDIA H200", lib: str = "cublasLt-130100",
              libtype: str = "cublaslt", solution: str = "cublaslt:id=66,tile=20") -> TunedRow:
    return TunedRow(
        GemmProblem(m, n, 4096, True, FP8, torch.bfloat16), libtype, 12345, 0.0071, solution,
        default_ms=0.0081, speedup=1.14, tflops=4.7, gbps=2400.0, max_rel_err=0.002,
        device=device, sm_count=132, lib_version=lib, torch_version="2.11.0",
        tuned_at="2026-11-27T03:00:00",
    )


def write(tmp_path: Path, text: str, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shapes_round_trip(tmp_path: Path) -> None:
    rows = [
        ShapeRow(GemmProblem(6144, 1, 4096), 32, ("model.layers.*.self_attn.qkv_proj",)),
        ShapeRow(GemmProblem(512, 7, 64, True, torch.float16, torch.float16), 3, ("a", "b")),
        ShapeRow(GemmProblem(64, 2, 128, False, torch.bfloat16, torch.float32), 1, ()),
    ]
    path = tmp_path / "shapes.csv"
    write_shapes(path, rows)
    assert path.read_text().splitlines()[0] == "M,N,K,bias,dtype,outdtype,count,layers"
    assert sorted(read_shapes(path), key=str) == sorted(rows, key=str)


def test_tuned_round_trip(tmp_path: Path) -> None:
    rows = [tuned_row(), tuned_row(n=16, libtype="default", solution="default:"),
            tuned_row(m=1280, device="NVIDIA H100 80GB HBM3")]
    path = tmp_path / "tuned.csv"
    write_tuned(path, rows)
    assert path.read_text().splitlines()[0] == ",".join(TUNED_COLUMNS)
    back = read_tuned(path)
    assert len(back) == 3
    for row in rows:
        match = next(r for r in back if r.identity() == row.identity())
        assert match.solution == row.solution and match.libtype == row.libtype
        assert math.isclose(match.soltimems, row.soltimems, rel_tol=1e-5)
        assert match.sm_count == 132 and match.torch_version == "2.11.0"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("M,N,K\n4096,1,4096\n", GemmProblem(4096, 1, 4096)),
        ("M,N,K,bias,dtype\n4096,3,1024,True,torch.float16\n",
         GemmProblem(4096, 3, 1024, True, torch.float16, torch.bfloat16)),
        ("M,N,K,bias,indtype,outdtype\n64,2,32,False,torch.float8_e4m3fnuz,torch.float16\n",
         GemmProblem(64, 2, 32, False, torch.float8_e4m3fnuz, torch.float16)),
    ],
)
def test_shapes_gradlib_variants(tmp_path: Path, text: str, expected: GemmProblem) -> None:
    (row,) = read_shapes(write(tmp_path, text))
    assert row.problem == expected and row.count == 1


@pytest.mark.parametrize(
    "text, libtype, soltime",
    [
        ("M,N,K,solidx\n4096,1,4096,17\n", "hipblaslt", math.nan),
        ("M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems\n"
         "4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16,rocblas,17,0.01\n", "rocblas", 0.01),
        ("M,N,K,indtype,outdtype,solidx,soltimes\n"
         "4096,1,4096,torch.float8_e4m3fnuz,torch.float16,17,0.02\n", "hipblaslt", 0.02),
        ("M,N,K,bias,dtype,outdtype,libtype,solidx,soltimes\n"
         "4096,1,4096,False,torch.float16,torch.float16,hipblaslt,17,0.03\n", "hipblaslt", 0.03),
    ],
)
def test_tuned_gradlib_variants(tmp_path: Path, text: str, libtype: str, soltime: float) -> None:
    (row,) = read_tuned(write(tmp_path, text))
    assert row.problem.M == 4096 and row.problem.N == 1 and row.solidx == 17
    assert row.libtype == libtype
    assert (math.isnan(soltime) and math.isnan(row.soltimems)) or row.soltimems == soltime


HEADER = "M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems,solution\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16,cublaslt,abc,0.01,cublaslt:id=1\n",
         ":2: column solidx: 'abc' is not an integer"),
        ("4096,-1,4096,False,torch.float8_e4m3fn,torch.bfloat16,cublaslt,1,0.01,cublaslt:id=1\n",
         ":2: column N: '-1' must be a positive integer"),
        ("4096,1,0,False,torch.float8_e4m3fn,torch.bfloat16,cublaslt,1,0.01,cublaslt:id=1\n",
         ":2: column K: '0' must be a positive integer"),
        ("4096,1,4096,False,torch.float9,torch.bfloat16,cublaslt,1,0.01,cublaslt:id=1\n",
         ":2: column dtype: unknown dtype 'torch.float9'"),
        ("4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16,mkl,1,0.01,mkl:x=1\n",
         ":2: column libtype: unknown libtype 'mkl'"),
    ],
)
def test_tuned_bad_rows(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, HEADER + body, "tuned_fp8.csv")
    with pytest.raises(CsvError) as info:
        read_tuned(path)
    assert str(info.value).startswith(f"{path}{message}")
    assert info.value.line == 2


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "M,K,solidx\n1,2,3\n")
    with pytest.raises(CsvError, match=rf"^{path}:1: column N: missing"):
        read_tuned(path)


def test_validate_lists_every_error(tmp_path: Path) -> None:
    good = "4096,1,4096,False,torch.float8_e4m3fn,torch.bfloat16,default,42051450,0.01,default:\n"
    bad = "4096,x,4096,False,torch.float8_e4m3fn,torch.bfloat16,default,42051450,0.01,default:\n"
    path = write(tmp_path, HEADER + good + bad + good + bad)
    errors = validate(path)
    assert [e.line for e in errors] == [3, 5]
    assert all(e.column == "N" for e in errors)


def test_empty_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="empty file"):
        read_shapes(write(tmp_path, "\n\n"))
    with pytest.raises(CsvError, match="file not found"):
        read_shapes(tmp_path / "nope.csv")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_csv_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    for reader in (read_shapes, read_tuned):
        try:
            reader(path)
        except CsvError:
            pass


cell = st.one_of(
    st.sampled_from(["1", "0", "-3", "4096", "True", "torch.bfloat16", "fp8", "default", "cublaslt",
                     "cublaslt:id=1", "", "1e3", "nan", '"a,b"', "x"]),
    st.text(max_size=6),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.permutations(list(TUNED_COLUMNS)).map(lambda c: c[:9]),
       rows=st.lists(st.lists(cell, min_size=0, max_size=11), max_size=4))
def test_random_csv_text_raises_only_csv_error(tmp_path: Path, header: list[str],
                                               rows: list[list[str]]) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]))
    for reader in (read_shapes, read_tuned):
        try:
            reader(path)
        except CsvError:
            pass


def _append_rows(path: str, worker: int, count: int) -> None:
    for i in range(count):
        problem = GemmProblem(64 * (worker + 1), i + 1, 128)
        add_to_shapes_file(path, [ShapeRow(problem, 1, (f"rank{worker}",)),
                                  ShapeRow(GemmProblem(8, 8, 8), 1, ("shared",))])


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shapes.csv")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_append_rows, args=(path, w, 10)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    rows = read_shapes(path)
    assert len(rows) == 4 * 10 + 1
    shared = next(r for r in rows if r.problem == GemmProblem(8, 8, 8))
    assert shared.count == 40
    assert all(r.count == 1 for r in rows if r is not shared)


def test_merge_counts_and_layers() -> None:
    p = GemmProblem(64, 1, 64)
    merged = merge_shapes([ShapeRow(p, 2, ("a",))], [ShapeRow(p, 3, ("b", "a"))])
    assert merged == [ShapeRow(p, 5, ("a", "b"))]


def test_tuned_file_merge_replaces_same_build(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    add_to_tuned_file(path, [tuned_row(), tuned_row(device="other")])
    add_to_tuned_file(path, [tuned_row(solution="cublaslt:id=7")])
    rows = read_tuned(path)
    assert len(rows) == 2
    assert {r.solution for r in rows} == {"cublaslt:id=7", "cublaslt:id=66,tile=20"}


def test_select_rows_by_device_and_build() -> None:
    rows = [tuned_row(), tuned_row(n=2, device="NVIDIA H100 80GB HBM3"),
            tuned_row(n=4, lib="cublasLt-1"),
            tuned_row(n=8, libtype="triton", solution="triton:kernel=skinny"),
            tuned_row(n=16, libtype="default", solution="default:", lib="torch-9")]
    versions = {"cublaslt": "cublasLt-130100", "triton": None}
    sel = select_rows(rows, "NVIDIA H200", 132, versions.get)
    assert [r.problem.N for r in sel.rows] == [1, 16]
    assert sum(sel.skipped.values()) == 3
    assert "2 rows loaded, 3 skipped" in sel.summary()
