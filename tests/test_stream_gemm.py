"""The streaming skinny kernels (``triton:kernel=stream`` / ``streamdot``: gemv and skinny in
stream mode) against the fp32 reference: fp8 with per-tensor scales and bf16/fp16, odd M, K not
a multiple of bk, bias, fewer tokens than built for, more row blocks than programs (the
interpreter stands in for 4 SMs); spec round trips and refusals. ``@pytest.mark.gpu`` tests
run every listed stream config at the Llama decode shapes, and one inside a CUDA graph."""
from __future__ import annotations

import pytest
import torch

from solidx.gradlib.backends.triton import TritonBackend
from solidx.gradlib.backends.triton_configs import candidate_configs, config_from_spec
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem

FP8 = torch.float8_e4m3fn
BF16, FP16 = torch.bfloat16, torch.float16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
backend = TritonBackend()


def _check(problem: GemmProblem, spec: str, seed: int = 0) -> None:
    ops = make_operands(problem, DEVICE, torch.Generator().manual_seed(seed))
    out = backend.from_spec(spec, problem).run(ops)
    assert out.shape == (problem.N, problem.M) and out.dtype == problem.outdtype
    err = max_rel_err(out, reference_gemm(problem, ops))
    assert err <= tolerance(problem), f"{spec} on {problem}: max_rel_err {err}"


CASES = [
    # (M, N, K, bias, dtype, outdtype, spec)
    (40, 1, 200, True, FP8, BF16, "triton:kernel=stream,bn=1,bm=4,bk=64,progs=1,warps=1,stages=1"),
    (37, 3, 256, False, FP8, BF16, "triton:kernel=stream,bn=4,bm=8,bk=128,progs=2,warps=2,"
                                   "stages=1"),
    (40, 2, 96, True, BF16, BF16, "triton:kernel=stream,bn=2,bm=4,bk=32,progs=1,warps=1,stages=1"),
    (24, 8, 80, False, FP16, FP16, "triton:kernel=stream,bn=8,bm=4,bk=16,progs=1,warps=1,"
                                   "stages=1"),
    (40, 5, 200, True, FP8, BF16, "triton:kernel=streamdot,bn=16,bm=16,bk=64,progs=1,warps=4,"
                                  "stages=2"),
    (72, 16, 256, False, FP8, BF16, "triton:kernel=streamdot,bn=16,bm=16,bk=32,progs=1,warps=4,"
                                    "stages=3"),
    (40, 3, 96, True, BF16, BF16, "triton:kernel=streamdot,bn=16,bm=32,bk=32,progs=2,warps=4,"
                                  "stages=2"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[4]}-N{c[1]}-{c[-1].split(',')[0]}")
def test_stream_kernels_match_reference(case: tuple) -> None:
    m, n, k, bias, dtype, outdtype, spec = case
    _check(GemmProblem(m, n, k, bias, dtype, outdtype), spec)


def test_runs_fewer_tokens_than_built_for() -> None:
    problem = GemmProblem(40, 16, 128, dtype=BF16, outdtype=BF16)
    sol = backend.from_spec(
        "triton:kernel=streamdot,bn=16,bm=16,bk=64,progs=1,warps=4,stages=2", problem)
    assert sol.accepts(1) and sol.accepts(16) and not sol.accepts(17)
    small = problem.with_tokens(2)
    ops = make_operands(small, DEVICE, torch.Generator().manual_seed(2))
    assert max_rel_err(sol.run(ops), reference_gemm(small, ops)) <= tolerance(small)


def test_listed_stream_configs_round_trip_and_stay_modest() -> None:
    for n in (1, 2, 4, 8, 16):
        for dtype in (FP8, BF16):
            problem = GemmProblem(1280, n, 8192, dtype=dtype, outdtype=BF16)
            stream = [c for c in candidate_configs(problem) if c.kernel.startswith("stream")]
            assert stream and len(stream) <= 30
            assert all(config_from_spec(c.spec) == c for c in stream)
            assert all(c.kernel == "streamdot" for c in stream if n > 4)
    assert not any(c.kernel.startswith("stream") for c in candidate_configs(GemmProblem(64, 32,
                                                                                        64)))


@pytest.mark.parametrize("spec, why", [
    ("triton:kernel=stream,bn=4,bm=8,bk=128,progs=0,warps=4,stages=1", "persistent"),
    ("triton:kernel=stream,bn=16,bm=8,bk=128,progs=1,warps=4,stages=1", "at most 8 tokens"),
    ("triton:kernel=streamdot,bn=32,bm=16,bk=128,progs=1,warps=4,stages=2", "bn = 16"),
    ("triton:kernel=streamdot,bn=16,bm=8,bk=128,progs=1,warps=4,stages=2", "bm >= 16"),
    ("triton:kernel=stream,bn=4,bm=8,bk=128,splitk=2,progs=1,warps=4,stages=1", "exactly"),
])
def test_invalid_stream_specs_raise(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        backend.from_spec(spec, GemmProblem(64, 4, 4096))


# --- on the device ------------------------------------------------------------------------

DECODE = [GemmProblem(m, n, k, dtype=dtype, outdtype=BF16)
          for m, k in ((1280, 8192), (4096, 14336)) for n in (1, 4, 16) for dtype in (FP8, BF16)]


@pytest.mark.gpu
@pytest.mark.parametrize("problem", DECODE, ids=str)
def test_every_listed_stream_config_matches_reference_on_gpu(problem: GemmProblem) -> None:
    ops = make_operands(problem, "cuda", torch.Generator().manual_seed(3))
    ref = reference_gemm(problem, ops)
    bad = []
    for sol in backend.solutions(problem):
        if sol.config.kernel.startswith("stream"):
            err = max_rel_err(sol.run(ops), ref)
            if not err <= tolerance(problem):
                bad.append((sol.spec, err))
    assert not bad, bad


@pytest.mark.gpu
def test_stream_kernel_in_a_cuda_graph() -> None:
    problem = GemmProblem(6144, 8, 4096, bias=True)
    ops = make_operands(problem, "cuda", torch.Generator().manual_seed(4))
    sol = backend.from_spec(
        "triton:kernel=streamdot,bn=16,bm=32,bk=256,progs=1,warps=4,stages=4", problem)
    expected = sol.run(ops)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sol.run(ops)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
