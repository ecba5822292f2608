"""The ``triton`` backend: its kernels against the fp32 reference, spec round trips, the
split-K counters, CUDA graphs and the read-floor kernel.

CPU runs use the Triton interpreter on tiny shapes; ``@pytest.mark.gpu`` tests run every
listed config at Llama-3-8B sizes on the device."""
from __future__ import annotations

import pytest
import torch

from solidx.gradlib.backends.triton import TritonBackend, candidate_configs
from solidx.gradlib.kernels.read_floor import floor_output, read_floor
from solidx.gradlib.kernels.splitk import workspace
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem

FP8 = torch.float8_e4m3fn
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
backend = TritonBackend()


def _check(problem: GemmProblem, spec: str, seed: int = 0) -> None:
    ops = make_operands(problem, DEVICE, torch.Generator().manual_seed(seed))
    sol = backend.from_spec(spec, problem)
    out = sol.run(ops)
    assert out.shape == (problem.N, problem.M) and out.dtype == problem.outdtype
    err = max_rel_err(out, reference_gemm(problem, ops))
    assert err <= tolerance(problem), f"{spec} on {problem}: max_rel_err {err}"


CASES = [
    # (M, N, K, bias, dtype, outdtype, spec): odd M, N = 1 or 3, K not a multiple of bk.
    (40, 1, 200, True, FP8, torch.bfloat16,
     "triton:kernel=gemv,bn=1,bm=16,bk=64,splitk=2,progs=0,warps=4"),
    (40, 2, 256, False, FP8, torch.bfloat16,
     "triton:kernel=gemv,bn=2,bm=8,bk=64,splitk=1,progs=1,warps=2"),
    (40, 3, 200, True, FP8, torch.bfloat16,
     "triton:kernel=skinny,bn=16,bm=16,bk=32,splitk=3,progs=1,warps=4,stages=2"),
    (40, 1, 256, False, FP8, torch.bfloat16,
     "triton:kernel=skinny,bn=16,bm=32,bk=64,splitk=1,progs=0,warps=4,stages=3"),
    (40, 3, 200, True, FP8, torch.bfloat16,
     "triton:kernel=tiled,bn=16,bm=32,bk=32,gm=2,splitk=3,warps=4,stages=2"),
    (128, 40, 64, True, FP8, torch.bfloat16,  # a tile of 64 x 128: the one-at-a-time reduction
     "triton:kernel=tiled,bn=64,bm=128,bk=32,gm=1,splitk=2,warps=4,stages=2"),
    (24, 37, 96, True, torch.float16, torch.float16,
     "triton:kernel=tiled,bn=16,bm=16,bk=32,gm=2,splitk=1,warps=4,stages=2"),
    (24, 3, 96, True, torch.float16, torch.float16,
     "triton:kernel=skinny,bn=16,bm=16,bk=32,splitk=2,progs=0,warps=4,stages=2"),
    (24, 1, 80, True, torch.float16, torch.float16,
     "triton:kernel=gemv,bn=4,bm=8,bk=32,splitk=2,progs=1,warps=1"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[-1].split(":")[1])
def test_kernels_match_reference(case: tuple) -> None:
    m, n, k, bias, dtype, outdtype, spec = case
    _check(GemmProblem(m, n, k, bias, dtype, outdtype), spec)


def test_split_k_resets_counters_and_repeats_exactly() -> None:
    problem = GemmProblem(40, 3, 200, bias=True)
    ops = make_operands(problem, DEVICE, torch.Generator().manual_seed(1))
    sol = backend.from_spec(
        "triton:kernel=skinny,bn=16,bm=16,bk=32,splitk=4,progs=1,warps=4,stages=2", problem)
    first, second = sol.run(ops), sol.run(ops)
    assert torch.equal(first, second)
    assert int(workspace(first.device)[1].abs().sum()) == 0


def test_runs_fewer_tokens_than_built_for() -> None:
    problem = GemmProblem(40, 3, 128)
    sol = backend.from_spec(
        "triton:kernel=skinny,bn=16,bm=16,bk=64,splitk=2,progs=0,warps=4,stages=2", problem)
    assert sol.accepts(1) and sol.accepts(16) and not sol.accepts(17)
    small = problem.with_tokens(1)
    ops = make_operands(small, DEVICE, torch.Generator().manual_seed(2))
    assert max_rel_err(sol.run(ops), reference_gemm(small, ops)) <= tolerance(small)


@pytest.mark.parametrize("problem", [
    GemmProblem(256, 1, 512), GemmProblem(4096, 2, 4096), GemmProblem(6144, 16, 4096),
    GemmProblem(1280, 32, 8192, bias=True), GemmProblem(4096, 128, 4096),
    GemmProblem(4096, 8192, 14336), GemmProblem(4096, 1, 4096, dtype=torch.bfloat16),
    GemmProblem(96, 77, 200, True, torch.float16, torch.float16),
], ids=str)
def test_every_listed_spec_round_trips(problem: GemmProblem) -> None:
    sols = backend.solutions(problem)
    assert sols and len(sols) <= 150
    specs = [s.spec for s in sols]
    assert len(set(specs)) == len(specs)
    for spec in specs:
        assert backend.from_spec(spec, problem).spec == spec
        assert backend.from_spec(spec, problem).accepts(problem.N)


def test_skinny_family_lists_decode_kernels_only_for_few_tokens() -> None:
    kernels = {c.kernel for c in candidate_configs(GemmProblem(4096, 1, 4096))}
    assert kernels == {"gemv", "skinny", "stream", "streamdot"}
    assert {c.kernel for c in candidate_configs(GemmProblem(4096, 2, 4096))} == {
        "gemv", "skinny", "stream", "streamdot"}
    gemv_bn = {c.bn for c in candidate_configs(GemmProblem(4096, 5, 4096)) if c.kernel == "gemv"}
    assert gemv_bn == {8}
    assert {c.kernel for c in candidate_configs(GemmProblem(4096, 16, 4096))} == {
        "skinny", "streamdot"}
    assert {c.kernel for c in candidate_configs(GemmProblem(4096, 32, 4096))} == {"skinny"}
    assert {c.kernel for c in candidate_configs(GemmProblem(4096, 64, 4096))} == {"tiled"}


@pytest.mark.parametrize("spec", [
    "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=2,progs=0,warps=4",  # missing stages
    "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=2,progs=0,warps=4,stages=3,gm=8",  # extra
    "triton:kernel=warp,bn=16,bm=64,bk=256,splitk=2,progs=0,warps=4,stages=3",  # unknown kernel
    "triton:bn=16,bm=64,bk=256,splitk=2,progs=0,warps=4,stages=3",  # no kernel
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk=two,progs=0,warps=4",  # not an integer
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk,progs=0,warps=4",  # malformed field
    "default:kernel=gemv,bn=1,bm=16,bk=256,splitk=1,progs=0,warps=4",  # other libtype
    "triton:kernel=gemv,bn=1,bm=48,bk=256,splitk=1,progs=0,warps=4",  # bm not a power of two
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk=0,progs=0,warps=4",  # no split
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk=1,progs=-1,warps=4",  # negative progs
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk=1,progs=0,warps=3",  # warps
    "triton:kernel=gemv,bn=1,bm=16,bk=256,splitk=64,progs=0,warps=4",  # empty splits of K=4096
    "triton:kernel=skinny,bn=1,bm=64,bk=256,splitk=1,progs=0,warps=4,stages=3",  # dot: bn >= 16
    "triton:kernel=skinny,bn=16,bm=128,bk=1024,splitk=1,progs=0,warps=4,stages=4",  # smem
])
def test_malformed_or_invalid_spec_raises(spec: str) -> None:
    with pytest.raises(ValueError, match="spec"):
        backend.from_spec(spec, GemmProblem(4096, 1, 4096))


def test_spec_that_cannot_hold_the_tokens_raises() -> None:
    with pytest.raises(ValueError, match="exceeds bn"):
        backend.from_spec("triton:kernel=gemv,bn=2,bm=16,bk=256,splitk=1,progs=0,warps=4",
                          GemmProblem(4096, 3, 4096))
    with pytest.raises(ValueError, match="workspace"):
        backend.from_spec("triton:kernel=tiled,bn=128,bm=128,bk=64,gm=8,splitk=4,warps=8,"
                          "stages=3", GemmProblem(4096, 8192, 4096))


def test_read_floor_reads_every_word() -> None:
    buf = torch.randint(-1000, 1000, (3 * 1024 + 8,), dtype=torch.int32, device=DEVICE)
    out = floor_output(DEVICE, programs_per_sm=4)
    read_floor(buf, out, block=1024, num_warps=4)
    assert int(out.long().sum()) == int(buf.long().sum())


# --- on the device ------------------------------------------------------------------------

LLAMA = [GemmProblem(4096, n, 4096) for n in (1, 16, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("problem", LLAMA + [GemmProblem(4096, 3, 4096, bias=True)], ids=str)
def test_every_listed_config_matches_reference_on_gpu(problem: GemmProblem) -> None:
    ops = make_operands(problem, "cuda", torch.Generator().manual_seed(3))
    ref = reference_gemm(problem, ops)
    bad = []
    for sol in backend.solutions(problem):
        err = max_rel_err(sol.run(ops), ref)
        if not err <= tolerance(problem):
            bad.append((sol.spec, err))
    assert not bad, bad


@pytest.mark.gpu
def test_split_k_in_a_cuda_graph_resets_its_counters() -> None:
    problem = GemmProblem(4096, 4, 4096, bias=True)
    gen = torch.Generator().manual_seed(4)
    ops = make_operands(problem, "cuda", gen)
    sol = backend.from_spec(
        "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=8,progs=1,warps=4,stages=4", problem)
    sol.run(ops)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        first = sol.run(ops)
        second = sol.run(ops)
    for _ in range(2):
        ops.x.copy_(make_operands(problem, "cuda", gen).x)
        graph.replay()
        torch.cuda.synchronize()
        ref = reference_gemm(problem, ops)
        assert max_rel_err(first, ref) <= tolerance(problem)
        assert max_rel_err(second, ref) <= tolerance(problem)
    assert int(workspace(first.device)[1].abs().sum()) == 0


@pytest.mark.gpu
def test_read_floor_on_gpu() -> None:
    buf = torch.randint(-2**20, 2**20, (1 << 22,), dtype=torch.int32, device="cuda")
    out = floor_output("cuda", programs_per_sm=8)
    read_floor(buf, out)
    assert int(out.long().sum()) == int(buf.long().sum())
