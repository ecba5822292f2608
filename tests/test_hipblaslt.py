"""The hipblaslt backend driven through its real ctypes bindings against the hipBLASLt ABI
stand-in (``tests/rocm_standin``, compiled here with the system C compiler, host memory): handle,
descriptors, scale pointers, bias epilogue, heuristic, solution index round trip, rebuilds from a
spec, a faulting algorithm; results compared with torch."""
from __future__ import annotations

import pytest
import torch
from rocm_standin.build import build

from solidx.gradlib.backends import get_backend
from solidx.gradlib.backends.hipblaslt import (
    HipBlasLtBackend, library_candidates, parse_algo_spec, unsupported_reason,
)
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem
from solidx.runtime.bench import lt_vendors

FNUZ, OCP = torch.float8_e4m3fnuz, torch.float8_e4m3fn
PROBLEMS = [
    GemmProblem(64, 8, 32, bias=True, dtype=FNUZ, outdtype=torch.bfloat16),
    GemmProblem(64, 4, 48, dtype=FNUZ, outdtype=torch.float16),
    GemmProblem(32, 8, 64, bias=True, dtype=OCP, outdtype=torch.float16),
    GemmProblem(48, 8, 32, dtype=OCP, outdtype=torch.float32),
    GemmProblem(48, 8, 32, bias=True, dtype=torch.bfloat16, outdtype=torch.bfloat16),
    GemmProblem(40, 3, 24, dtype=torch.float16, outdtype=torch.float16),
]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    library = build("hipblaslt", tmp_path_factory.mktemp("standin"))
    return HipBlasLtBackend(library=str(library), device="cpu")


def _operands(problem, seed=0):
    return make_operands(problem, "cpu", torch.Generator().manual_seed(seed))


def test_available_and_version(backend):
    assert backend.available() == (True, "")
    assert backend.version() == "hipblaslt-100042"  # hipblasLtGetVersion(handle, &v)


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_every_candidate_matches_torch(backend, problem):
    solutions = backend.solutions(problem)
    # the stand-in offers 1001, 2002 (1 MiB), 3003 (4 MiB, N >= 8) and 4004 (64 MiB: more than
    # the preference's max workspace, so the library itself leaves it out)
    expected = [1001, 2002, 3003] if problem.N >= 8 else [1001, 2002]
    assert [s.solidx for s in solutions] == expected
    ops = _operands(problem)
    ref = reference_gemm(problem, ops)
    for solution in solutions:
        out = solution.run(ops)
        assert out.shape == (problem.N, problem.M) and out.dtype == problem.outdtype
        assert max_rel_err(out, ref) <= tolerance(problem), solution.spec


def test_scale_pointers_and_bias_reach_the_library(backend):
    problem = PROBLEMS[0]
    solution = backend.solutions(problem)[0]
    ops = _operands(problem)
    base = solution.run(ops)
    # new tensors: the descriptor must be re-pointed at them
    for change in ({"scale_x": ops.scale_x * 2}, {"scale_w": ops.scale_w * 3},
                   {"bias": torch.zeros_like(ops.bias)}):
        for name, value in change.items():
            setattr(ops, name, value)
        out = solution.run(ops)
        assert max_rel_err(out, reference_gemm(problem, ops)) <= tolerance(problem), change
        assert max_rel_err(out, base) > 0.1, change


def test_index_is_the_first_int32_and_the_spec_rebuilds_the_algo(backend):
    problem = PROBLEMS[4]
    for solution in backend.solutions(problem):
        index, algo, workspace = parse_algo_spec(solution.spec)
        assert index == solution.solidx == int.from_bytes(bytes(algo.data[:4]), "little")
        assert bytes(algo.data) == bytes(solution.algo.data)
        assert algo.max_workspace_bytes == solution.algo.max_workspace_bytes
        rebuilt = backend.from_spec(solution.spec, problem)
        assert rebuilt.spec == solution.spec and rebuilt.workspace_bytes == workspace
        ops = _operands(problem, seed=3)
        assert torch.equal(rebuilt.run(ops), solution.run(ops))


def test_index_only_rows_are_matched_among_the_heuristic(backend):
    problem = PROBLEMS[4]
    full = {s.solidx: s.spec for s in backend.solutions(problem)}
    assert backend.from_spec("hipblaslt:index=2002", problem).spec == full[2002]
    with pytest.raises(ValueError, match="index 3003 is not among the 2 heuristic results.*"
                                         "uses default"):
        backend.from_spec("hipblaslt:index=3003", problem.with_tokens(2))


def test_a_faulting_algorithm_reports_its_status(backend):
    problem = PROBLEMS[4]
    data = (6666).to_bytes(4, "little") + bytes((6666 * 7 + j) & 0xFF for j in range(4, 16))
    faulting = backend.from_spec(f"hipblaslt:index=6666,algo={data.hex()},max_ws=0,ws=0", problem)
    with pytest.raises(RuntimeError,
                       match="hipblasLtMatmul failed: HIPBLAS_STATUS_EXECUTION_FAILED"):
        faulting.run(_operands(problem))
    head = (1001).to_bytes(4, "little").hex()
    unknown = f"hipblaslt:index=1001,algo={head}{'0' * 24},max_ws=0,ws=0"
    with pytest.raises(RuntimeError, match="HIPBLAS_STATUS_INVALID_VALUE"):
        backend.from_spec(unknown, problem).run(_operands(problem))


@pytest.mark.parametrize("spec, message", [
    ("hipblaslt:index=x", "not a number"),
    ("hipblaslt:index=1,algo=00", "expected index=I alone"),
    ("hipblaslt:index=1,algo=0011,max_ws=0,ws=0", "16 bytes"),
    ("hipblaslt:index=1,algo=" + "00" * 16 + ",max_ws=0,ws=0", "not the algo data's first int32"),
    ("hipblaslt:index=0,algo=" + "00" * 16 + ",max_ws=0,ws=999999999", "ws <="),
    ("cublaslt:index=1", "not a hipblaslt spec"),
])
def test_malformed_specs_are_refused(backend, spec, message):
    with pytest.raises(ValueError, match=message):
        backend.from_spec(spec, PROBLEMS[4])


def test_operand_mismatches_are_named(backend):
    solution = backend.solutions(PROBLEMS[4])[0]
    with pytest.raises(ValueError, match="do not fit"):
        solution.run(_operands(GemmProblem(48, 8, 16, dtype=torch.bfloat16,
                                           outdtype=torch.bfloat16)))
    with pytest.raises(ValueError, match="problem is"):
        solution.run(_operands(GemmProblem(48, 8, 32, dtype=torch.float16,
                                           outdtype=torch.float16)))


def test_unsupported_problems():
    assert "e4m3fnuz or e4m3fn" in unsupported_reason(
        GemmProblem(64, 8, 32, dtype=torch.float8_e5m2, outdtype=torch.bfloat16))
    assert "outdtype == dtype" in unsupported_reason(
        GemmProblem(64, 8, 32, dtype=torch.bfloat16, outdtype=torch.float32))
    assert "bf16, fp16" in unsupported_reason(
        GemmProblem(64, 8, 32, dtype=torch.float32, outdtype=torch.float32))


def test_unavailable_without_rocm(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    backend = get_backend("hipblaslt")
    assert isinstance(backend, HipBlasLtBackend)
    ok, reason = backend.available()
    assert not ok and "ROCm build" in reason
    assert backend.solutions(PROBLEMS[0]) == []
    with pytest.raises(RuntimeError, match="hipblaslt backend unavailable"):
        backend.from_spec("hipblaslt:index=1", PROBLEMS[0])
    with pytest.raises(ValueError, match="stand-in"):
        HipBlasLtBackend(device="cpu")


def test_library_search_order(tmp_path):
    torch_lib, rocm = tmp_path / "torch" / "lib", tmp_path / "rocm"
    for d in (torch_lib, rocm / "lib"):
        d.mkdir(parents=True)
        (d / "libhipblaslt.so.0").touch()
    maps = "7f00-7f01 r-xp 00000000 08:01 1 /opt/x/libhipblaslt.so.0\n"
    found = library_candidates(maps, str(torch_lib), str(rocm), "libhipblaslt.so.0")
    assert found[:3] == ["/opt/x/libhipblaslt.so.0", str(torch_lib / "libhipblaslt.so.0"),
                         str(rocm / "lib" / "libhipblaslt.so.0")]
    assert found[-1] == "libhipblaslt.so.0"


def test_shared_lt_bench_table_and_cpu_refusal(capsys):
    rows = [{"problem": "M=1 N=1 K=1", "vendor": "cublaslt", "heuristic": 0},
            {"problem": "M=2 N=2 K=2", "vendor": "cublaslt", "heuristic": 3,
             "worst_err_over_tol": 0.5, "first_ms": 0.01, "default_ms": 0.02}]
    lines = lt_vendors.format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["problem", "vendor", "picks"] and len(lines) == 3
    assert "nan" in lines[1] and "0.0100" in lines[2]
    if not torch.cuda.is_available():
        assert lt_vendors.main([]) == 2
        assert "needs a CUDA or ROCm GPU" in capsys.readouterr().err
