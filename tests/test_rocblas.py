"""The rocblas backend driven through its real ctypes bindings against the rocBLAS ABI stand-in
(``tests/rocm_standin``, host memory): get_solutions (count, then list), the check flag, runs by
solution index, a faulting solution; results compared with torch. And gradlib's preference rule
between hipBLASLt and rocBLAS."""
from __future__ import annotations

import pytest
import torch
from rocm_standin.build import build

from solidx.gradlib.backends import get_backend
from solidx.gradlib.backends.rocblas import RocBlasBackend, unsupported_reason
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.timing import Timing
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tuner import choose_winner

BF16, FP16 = torch.bfloat16, torch.float16
PROBLEMS = [
    GemmProblem(48, 8, 32, bias=True, dtype=BF16, outdtype=BF16),
    GemmProblem(40, 3, 24, dtype=FP16, outdtype=FP16),
    GemmProblem(16, 9, 64, bias=True, dtype=FP16, outdtype=FP16),
]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    library = build("rocblas", tmp_path_factory.mktemp("standin"))
    return RocBlasBackend(library=str(library), device="cpu")


def _operands(problem, seed=0):
    return make_operands(problem, "cpu", torch.Generator().manual_seed(seed))


def test_available_and_version(backend):
    assert backend.available() == (True, "")
    assert backend.version() == "rocblas-4.2.0.standin"


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_every_solution_matches_torch(backend, problem):
    solutions = backend.solutions(problem)
    # the stand-in lists 11, 22 and (N >= 8) 33; 44 is valid but never listed
    assert [s.solidx for s in solutions] == ([11, 22, 33] if problem.N >= 8 else [11, 22])
    assert [s.spec for s in solutions][0] == "rocblas:index=11"
    ops = _operands(problem)
    ref = reference_gemm(problem, ops)
    for solution in solutions:
        out = solution.run(ops)
        assert out.shape == (problem.N, problem.M) and out.dtype == problem.outdtype
        assert max_rel_err(out, ref) <= tolerance(problem), solution.spec
        assert torch.equal(backend.from_spec(solution.spec, problem).run(ops), out)
    assert len(backend.solutions(problem, max_candidates=1)) == 1


def test_check_flag_refuses_an_index_the_problem_lacks(backend):
    with pytest.raises(ValueError, match="refuses solution 33.*uses default"):
        backend.from_spec("rocblas:index=33", PROBLEMS[1])  # 33 serves N >= 8 only
    with pytest.raises(ValueError, match="refuses solution 99"):
        backend.from_spec("rocblas:index=99", PROBLEMS[0])


def test_a_faulting_solution_reports_its_status(backend):
    solution = backend.from_spec("rocblas:index=44", PROBLEMS[0])  # passes the check flag
    with pytest.raises(RuntimeError, match=r"rocblas_gemm_ex \(solution 44\) failed: "
                                           "rocblas_status_internal_error"):
        solution.run(_operands(PROBLEMS[0]))


@pytest.mark.parametrize("spec", ["rocblas:", "rocblas:index=x", "rocblas:index=1,k=2",
                                  "hipblaslt:index=1"])
def test_malformed_specs_are_refused(backend, spec):
    with pytest.raises(ValueError, match="not a rocblas spec"):
        backend.from_spec(spec, PROBLEMS[0])


def test_fp8_is_not_rocblas():
    assert "16-bit only" in unsupported_reason(GemmProblem(64, 8, 32))
    assert "outdtype == dtype" in unsupported_reason(
        GemmProblem(64, 8, 32, dtype=BF16, outdtype=torch.float32))


def test_unavailable_without_rocm(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    backend = get_backend("rocblas")
    assert isinstance(backend, RocBlasBackend)
    ok, reason = backend.available()
    assert not ok and "ROCm build" in reason and backend.solutions(PROBLEMS[0]) == []


def _t(ms: float) -> Timing:
    return Timing(ms, ms, ms, 1)


@pytest.mark.parametrize("rocblas_ms, winner", [
    (0.990, "rocblas:index=3"),  # 1% faster than hipBLASLt: rocBLAS
    (0.996, "hipblaslt:index=7"),  # 0.4% faster: hipBLASLt is preferred
    (1.000, "hipblaslt:index=7"),
])
def test_gradlib_preference_rule(rocblas_ms, winner):
    timings = {"default:": _t(2.0), "hipblaslt:index=7": _t(1.0),
               "rocblas:index=3": _t(rocblas_ms)}
    assert choose_winner(timings, 0.03, TuneOptions().rocblas_margin) == winner
    assert choose_winner(timings, 0.03, 0.0) == min(timings, key=lambda s: timings[s].median_ms)


def test_preference_rule_option_is_checked():
    assert TuneOptions().rocblas_margin == 0.005
    with pytest.raises(ValueError, match="rocblas_margin"):
        TuneOptions(rocblas_margin=1.5)
