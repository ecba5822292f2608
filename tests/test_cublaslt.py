"""The cuBLASLt backend: spec strings, library discovery and candidate order on CPU; on a GPU
(``-m gpu``) every candidate against the fp32 reference, spec rebuilds, other token counts and
CUDA-graph capture."""
from __future__ import annotations

import ctypes
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from solidx.gradlib.backends import cublaslt_api as api
from solidx.gradlib.backends import get_backend
from solidx.gradlib.backends.base import WORKSPACE_BYTES
from solidx.gradlib.backends.cublaslt import CublasLtBackend, unsupported_reason
from solidx.gradlib.backends.cublaslt_configs import (
    AlgoCaps, AlgoConfig, _distance, candidate_configs,
)
from solidx.gradlib.backends.lt_plan import LtPlan
from solidx.gradlib.backends.lt_vendor import CUBLASLT
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem

FP8 = torch.float8_e4m3fn
SPEC = "cublaslt:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0"


# -- CPU ----------------------------------------------------------------------------------------

def test_spec_format_matches_the_documented_form():
    config = AlgoConfig(66, tile=20, stages=15, splitk=4, red=1)
    assert config.spec == SPEC
    assert AlgoConfig.parse(SPEC) == config


def test_inner_shape_is_written_only_when_set():
    config = AlgoConfig(7, tile=18, stages=35, inner=3)
    assert config.spec.endswith(",cluster=0,inner=3")
    assert AlgoConfig.parse(config.spec) == config


@given(st.lists(st.integers(0, 2**16 - 1), min_size=9, max_size=9))
def test_spec_round_trip(values):
    values[3] = max(values[3], 1)  # splitk
    config = AlgoConfig(*values)
    assert AlgoConfig.parse(config.spec) == config


@pytest.mark.parametrize("spec", [
    "cublaslt:id=66",
    "cublaslt:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0",
    "cublaslt:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0,bogus=1",
    "cublaslt:id=x,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0",
    "cublaslt:id=-1,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0",
    "cublaslt:id=66,tile=20,stages=15,splitk=0,red=1,swizzle=0,custom=0,cluster=0",
    "triton:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0",
    "cublaslt:id66",
])
def test_malformed_spec_is_refused(spec):
    with pytest.raises(ValueError):
        CublasLtBackend().from_spec(spec, GemmProblem(64, 1, 64))


def test_registry_maps_the_libtype():
    assert isinstance(get_backend("cublaslt"), CublasLtBackend)


def test_unavailable_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    backend = CublasLtBackend()
    ok, reason = backend.available()
    assert not ok and "CUDA" in reason
    assert backend.solutions(GemmProblem(64, 1, 64)) == []
    with pytest.raises(RuntimeError, match="unavailable"):
        backend.version()
    with pytest.raises(RuntimeError, match="unavailable"):
        backend.from_spec(SPEC, GemmProblem(64, 1, 64))


def test_library_search_order(tmp_path):
    def touch(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return str(path)

    site = tmp_path / "site" / "nvidia"
    wheel13 = touch(site / "cu13" / "lib" / "libcublasLt.so.13")
    wheel12 = touch(site / "cublas" / "lib" / "libcublasLt.so.12")
    toolkit = touch(tmp_path / "cuda" / "lib64" / "libcublasLt.so.13")
    touch(tmp_path / "cuda" / "lib64" / "libcublas.so.13")
    loaded = "/opt/torch/lib/libcublasLt.so.13"
    maps = (f"7f00-7f10 r-xp 00000000 08:01 123   {loaded}\n"
            f"7f10-7f20 r--p 00010000 08:01 123   {loaded}\n"
            "7f20-7f30 r-xp 00000000 08:01 124   /usr/lib/libc.so.6\n")
    found = api.library_candidates(maps, [str(site)], str(tmp_path / "cuda"), "libcublasLt.so.13")
    assert found == [loaded, wheel13, wheel12, toolkit, "libcublasLt.so.13"]
    assert api.library_candidates("", [], None, None) == []


CAPS = {
    1: AlgoCaps(tiles=(20, 18), stages=(15,), splitk=True, red_mask=1 | 4, swizzle=True,
                custom_max=1, epilogue_mask=api.EPILOGUE_BIAS),
    2: AlgoCaps(tiles=(), stages=(), splitk=False, red_mask=0, swizzle=False, custom_max=0,
                epilogue_mask=0),
}


def test_candidates_put_heuristic_first_then_neighbours_then_bases():
    heuristic = [AlgoConfig(1, 18, 15, splitk=2, red=1, cluster=2), AlgoConfig(2)]
    configs = list(candidate_configs(heuristic, CAPS, k=512))
    assert configs[:2] == heuristic
    first_base = configs.index(AlgoConfig(1, 20, 15))
    near = [c for c in configs[2:first_base] if c.algo_id == 1]
    assert AlgoConfig(1, 18, 15, splitk=4, red=4, swizzle=1, custom=1, cluster=2) in near
    assert {c.cluster for c in near} == {2, 0}  # its own cluster and the other pick's
    assert {(c.tile, c.stages) for c in near} == {(18, 15)}  # neighbours keep the kernel
    changes = [_distance(c, heuristic[0]) for c in near]
    assert changes == sorted(changes) and changes[0] == 0 and changes[1] == 1
    # id 2 takes its turn among the bases; bases have no split-K
    assert configs[first_base:first_base + 2] == [AlgoConfig(1, 20, 15), AlgoConfig(2, 0, 0)]
    for c in configs:
        assert (c.red == 0) == (c.splitk == 1)
        assert c.red in (0, 1, 4)
        assert c.splitk in (1, 2, 3, 4)  # K=512 allows splits of at least 128
    assert all(c.splitk == 1 and c.swizzle == 0 and c.custom == 0
               for c in configs if c.algo_id == 2)


def test_bases_of_the_heuristic_ids_come_first():
    caps = {i: CAPS[2] for i in (5, 6, 7)}
    configs = list(candidate_configs([AlgoConfig(7)], caps, k=512))
    assert configs == [AlgoConfig(7), AlgoConfig(7), AlgoConfig(7), AlgoConfig(5), AlgoConfig(6),
                       AlgoConfig(7), AlgoConfig(5), AlgoConfig(6)]


def test_unsupported_problems_are_named():
    assert unsupported_reason(GemmProblem(64, 1, 64)) is None
    assert unsupported_reason(GemmProblem(64, 1, 64, bias=True, outdtype=torch.float16)) is None
    bf16 = GemmProblem(64, 1, 64, dtype=torch.bfloat16, outdtype=torch.bfloat16)
    assert unsupported_reason(bf16) is None
    assert "bias" in unsupported_reason(GemmProblem(64, 1, 64, bias=True, outdtype=torch.float32))
    assert unsupported_reason(GemmProblem(64, 1, 64, outdtype=FP8))
    assert unsupported_reason(GemmProblem(64, 1, 64, dtype=torch.float8_e5m2))
    assert unsupported_reason(GemmProblem(64, 1, 64, dtype=torch.float16, outdtype=torch.bfloat16))


class FakeLt:
    """Stands in for libcublasLt on CPU: two algo ids; id 1 has tiles 20 and 18, stages 15,
    split-K up to 4 (workspace 1 MiB per split; more than 4 splits is refused by AlgoCheck);
    id 2 has nothing to configure. The heuristic picks id 1 with tile 18, then id 2."""

    SLOTS = {0: 0, 1: 1, 6: 2, 2: 3, 3: 4, 4: 5, 5: 6, 8: 7}  # config attr -> slot; inner: none

    def __init__(self):
        self.created = 0

    def __getattr__(self, name):
        raise AttributeError(name)

    def _new(self, ref, *args):
        self.created += 1
        ref._obj.value = self.created
        return 0

    cublasLtMatmulDescCreate = cublasLtMatrixLayoutCreate = cublasLtMatmulPreferenceCreate = _new

    def _ok(self, *args):
        return 0

    cublasLtMatmulDescDestroy = cublasLtMatrixLayoutDestroy = cublasLtMatmulPreferenceDestroy = _ok
    cublasLtMatmulDescSetAttribute = cublasLtMatmulPreferenceSetAttribute = _ok

    def cublasLtMatmulAlgoGetIds(self, handle, *args):
        *_, count, ids, returned = args
        ids[0], ids[1] = 1, 2
        returned._obj.value = 2
        return 0

    def cublasLtMatmulAlgoInit(self, handle, *args):
        *_, algo_id, algo = args
        if algo_id not in (1, 2):
            return api.CUBLAS_STATUS_NOT_SUPPORTED
        algo._obj.data[:] = [algo_id, 0, 0, 1, 0, 0, 0, 0]
        return 0

    def cublasLtMatmulAlgoConfigSetAttribute(self, algo, attr, buf, size):
        assert size == ctypes.sizeof(api.CONFIG_CTYPES[attr])
        if attr in self.SLOTS:
            algo._obj.data[self.SLOTS[attr]] = buf._obj.value
        return 0 if attr in self.SLOTS or buf._obj.value == 0 else api.CUBLAS_STATUS_INVALID_VALUE

    def cublasLtMatmulAlgoConfigGetAttribute(self, algo, attr, buf, size, written):
        assert size == ctypes.sizeof(api.CONFIG_CTYPES[attr])
        buf._obj.value = algo._obj.data[self.SLOTS[attr]] if attr in self.SLOTS else 0
        return 0

    def cublasLtMatmulAlgoCapGetAttribute(self, algo, attr, buf, size, written):
        one = algo._obj.data[0] == 1
        if attr in (api.CAP_TILE_IDS, api.CAP_STAGES_IDS):
            values = ([20, 18] if attr == api.CAP_TILE_IDS else [15]) if one else [0]
            written._obj.value = 4 * len(values)
            if size:
                buf[: len(values)] = values
            return 0
        scalars = {api.CAP_SPLITK_SUPPORT: 1, api.CAP_REDUCTION_SCHEME_MASK: 5,
                   api.CAP_CTA_SWIZZLING_SUPPORT: 0, api.CAP_CUSTOM_OPTION_MAX: 0,
                   api.CAP_EPILOGUE_MASK: api.EPILOGUE_BIAS}
        buf._obj.value = scalars[attr] if one or attr == api.CAP_EPILOGUE_MASK else 0
        return 0

    def _workspace(self, algo):
        algo_id, tile, _, splitk = list(algo.data)[:4]
        if algo_id == 2:
            return 0
        return 1 << 20 if splitk == 1 else (splitk << 20 if splitk <= 4 and tile else None)

    def cublasLtMatmulAlgoCheck(self, handle, desc, a, b, c, d, algo, result):
        workspace = self._workspace(algo._obj)
        if workspace is None:
            return api.CUBLAS_STATUS_NOT_SUPPORTED
        result._obj.workspaceSize = workspace
        return 0

    def cublasLtMatmulAlgoGetHeuristic(self, handle, desc, a, b, c, d, pref, count, results, n):
        results[0].algo.data[:] = [1, 18, 15, 1, 0, 0, 0, 2]
        results[1].algo.data[:] = [2, 0, 0, 1, 0, 0, 0, 0]
        n._obj.value = 2
        return 0


@pytest.fixture
def fake_backend(monkeypatch):
    import solidx.gradlib.backends.lt_plan as module

    lib = FakeLt()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "fake GPU")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(api, "load", lambda: (lib, "fake"))
    monkeypatch.setattr(module, "_device", lambda vendor, lib, device: module._Device(
        ctypes.c_void_p(1), torch.empty(16, dtype=torch.uint8)))
    return CublasLtBackend()


def test_listing_pipeline_with_a_fake_library(fake_backend):
    problem = GemmProblem(256, 8, 512, bias=True)
    solutions = fake_backend.solutions(problem)
    specs = [s.spec for s in solutions]
    assert specs[0] == "cublaslt:id=1,tile=18,stages=15,splitk=1,red=0,swizzle=0,custom=0,cluster=2"
    assert specs[1].startswith("cublaslt:id=2,tile=0,stages=0,splitk=1,")
    assert len(specs) == len(set(specs))
    # id 1: (no split + 3 splits × 2 reduction schemes) for the heuristic's kernel with both
    # picks' clusters (2 and 0), and for the other tile (cluster 0); id 2: both clusters
    assert len(specs) == 3 * 7 + 2
    assert all(s.config.splitk <= 4 for s in solutions)  # AlgoCheck refused 6 and more
    assert {s.workspace_bytes for s in solutions} == {0, 1 << 20, 2 << 20, 3 << 20, 4 << 20}
    assert len(fake_backend.solutions(problem, max_candidates=5)) == 5
    for solution in solutions:
        assert fake_backend.from_spec(solution.spec, problem).spec == solution.spec
        assert solution.accepts(3)
    with pytest.raises(ValueError, match="refuses"):
        fake_backend.from_spec(specs[0].replace("splitk=1,red=0", "splitk=8,red=1"), problem)
    with pytest.raises(ValueError, match="no algo id 7"):
        fake_backend.from_spec(specs[0].replace("id=1,", "id=7,"), problem)
    assert fake_backend.solutions(GemmProblem(256, 8, 512, bias=True, outdtype=torch.float32)) == []


# -- GPU ----------------------------------------------------------------------------------------

DTYPES = [  # (dtype, outdtype, bias)
    (FP8, torch.bfloat16, False),
    (FP8, torch.bfloat16, True),
    (FP8, torch.float16, False),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.float16, torch.float16, True),
]


@pytest.fixture(scope="module")
def backend():
    backend = CublasLtBackend()
    ok, reason = backend.available()
    if not ok:
        pytest.skip(reason)
    return backend


def _operands(problem, seed=0):
    return make_operands(problem, "cuda", torch.Generator().manual_seed(seed))


@pytest.mark.gpu
def test_version(backend):
    assert re.fullmatch(r"cublasLt-\d+", backend.version())


@pytest.mark.gpu
@pytest.mark.parametrize("mk", [(4096, 4096), (1280, 8192)])
@pytest.mark.parametrize("n", [1, 16, 128])
@pytest.mark.parametrize("dtype,outdtype,bias", DTYPES)
def test_every_candidate_matches_reference(backend, dtype, outdtype, bias, n, mk):
    problem = GemmProblem(mk[0], n, mk[1], bias=bias, dtype=dtype, outdtype=outdtype)
    solutions = backend.solutions(problem)
    assert solutions, f"no cuBLASLt candidates for {problem}"
    assert len(solutions) <= backend.max_candidates
    assert len({s.spec for s in solutions}) == len(solutions)
    ops = _operands(problem)
    ref = reference_gemm(problem, ops)
    bad = []
    for solution in solutions:
        assert solution.workspace_bytes <= WORKSPACE_BYTES
        out = solution.run(ops)
        assert out.shape == (n, problem.M) and out.dtype == outdtype
        err = max_rel_err(out, ref)
        if not err <= tolerance(problem):
            bad.append(f"{solution.spec}: max_rel_err {err:.2e}")
        assert backend.from_spec(solution.spec, problem).spec == solution.spec
    assert not bad, (
        f"{len(bad)}/{len(solutions)} wrong (tolerance {tolerance(problem):.2e}): {bad[:8]}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,outdtype,bias", DTYPES)
def test_shared_lt_calls_through_cublaslt(backend, dtype, outdtype, bias):
    """The calls hipBLASLt runs (LtPlan with a vendor table), here with cuBLASLt's table: every
    heuristic pick run through LtPlan directly matches the reference and the backend's own
    first candidate."""
    problem = GemmProblem(4096, 16, 4096, bias=bias, dtype=dtype, outdtype=outdtype)
    device = torch.device("cuda", torch.cuda.current_device())
    plan = LtPlan(CUBLASLT, api.library(), problem, device)
    results = plan.heuristic(problem.N, 8)
    assert results, f"no heuristic results for {problem}"
    ops = _operands(problem)
    ref = reference_gemm(problem, ops)
    for result in results:
        out = plan.matmul(result.algo, ops, result.workspaceSize)
        assert max_rel_err(out, ref) <= tolerance(problem)
    first = backend.solutions(problem, max_candidates=1)[0].run(ops)
    direct = plan.matmul(results[0].algo, ops, results[0].workspaceSize)
    assert max_rel_err(direct, first) <= tolerance(problem)


@pytest.mark.gpu
def test_other_token_counts(backend):
    problem = GemmProblem(4096, 16, 4096, bias=True)
    solutions = backend.solutions(problem, max_candidates=32)
    assert solutions[0].accepts(16)
    for n in (1, 5, 64):
        small = problem.with_tokens(n)
        ops = _operands(small, seed=n)
        ref = reference_gemm(small, ops)
        accepted = [s for s in solutions if s.accepts(n)]
        assert accepted, f"no candidate accepts N={n}"
        for solution in accepted:
            assert max_rel_err(solution.run(ops), ref) <= tolerance(small), solution.spec


@pytest.mark.gpu
def test_cuda_graph_capture_and_replay(backend):
    problem = GemmProblem(4096, 16, 4096, bias=True)
    solutions = backend.solutions(problem)
    split = [s for s in solutions if s.config.splitk > 1 and s.workspace_bytes > 0]
    for solution in solutions[:1] + split[:1]:
        ops = _operands(problem, seed=1)
        solution.run(ops)  # warm-up outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = solution.run(ops)
        fresh = _operands(problem, seed=2)
        for mine, new in zip(ops.tensors(), fresh.tensors()):
            mine.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert max_rel_err(out, reference_gemm(problem, fresh)) <= tolerance(problem), solution.spec


@pytest.mark.gpu
def test_refusals(backend):
    problem = GemmProblem(4096, 16, 4096)
    with pytest.raises(ValueError, match="id=999999"):
        backend.from_spec(SPEC.replace("id=66", "id=999999"), problem)
    spec = backend.solutions(problem, max_candidates=1)[0].spec
    with pytest.raises(ValueError, match="tile=9999"):
        backend.from_spec(re.sub(r"tile=\d+", "tile=9999", spec), problem)
    solution = backend.from_spec(spec, problem)
    ops = _operands(problem.with_tokens(16))
    with pytest.raises(ValueError, match="do not fit"):
        solution.run(_operands(GemmProblem(4096, 16, 2048)))
    with pytest.raises(ValueError, match="problem is"):
        bf16 = GemmProblem(4096, 16, 4096, dtype=torch.bfloat16, outdtype=torch.bfloat16)
        solution.run(_operands(bf16))
    assert solution.run(ops).shape == (16, 4096)
