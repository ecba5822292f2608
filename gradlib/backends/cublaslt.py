"""``cublaslt``: cuBLASLt's own configurations of a GEMM, called through ctypes.

Problems: fp8 e4m3 × e4m3 with per-tensor scale pointers into bf16/fp16/fp32 (bias epilogue
for bf16/fp16 outputs), and bf16/fp16/fp32 × same into the same dtype; fp32 accumulation.

Layout: gradlib's row-major ``x[N, K]``, ``w[M, K]``, ``y[N, M]`` read column-major are
``D(M×N, ld M) = Aᵀ·B`` with ``A = w`` as K×M (ld K) and ``B = x`` as K×N (ld K): the "TN"
form that Hopper's fp8 kernels require. A's scale is ``scale_w``, B's is ``scale_x``.

Candidates, best guesses first, bounded by ``max_candidates``: the heuristic's picks; their
neighbours (other split-K factors, reduction schemes, CTA swizzle, custom options and cluster
shapes of the same kernel, fewest changes first); every (algo id, tile, stages) the library's
capabilities list; then their neighbours.
Each is rebuilt from its configuration exactly as :meth:`CublasLtBackend.from_spec` does and
kept only if ``cublasLtMatmulAlgoCheck`` accepts it within ``WORKSPACE_BYTES``.

A spec names the whole configuration, e.g.
``cublaslt:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0`` (``inner=``
follows only when the kernel has a non-default inner shape).
"""
from __future__ import annotations

import ctypes
import dataclasses
import weakref
from dataclasses import dataclass
from itertools import chain, zip_longest
from typing import Iterable, Iterator

import torch

from solidx.gradlib.backends import cublaslt_api as api
from solidx.gradlib.backends.base import WORKSPACE_BYTES, Backend, Solution, format_spec, parse_spec
from solidx.gradlib.dtypes import dtype_name
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem

LIBTYPE = "cublaslt"
HEURISTIC_COUNT = 64
MAX_CANDIDATES = 256
CHECKS_PER_CANDIDATE = 64
"""Listing stops after ``CHECKS_PER_CANDIDATE × max_candidates`` AlgoCheck calls."""
SPLITK_FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
MIN_K_PER_SPLIT = 128

_SPEC_KEYS = ("id", "tile", "stages", "splitk", "red", "swizzle", "custom", "cluster", "inner")
_CONFIG_ATTRS = (
    api.CONFIG_ID, api.CONFIG_TILE_ID, api.CONFIG_STAGES_ID, api.CONFIG_SPLITK_NUM,
    api.CONFIG_REDUCTION_SCHEME, api.CONFIG_CTA_SWIZZLING, api.CONFIG_CUSTOM_OPTION,
    api.CONFIG_CLUSTER_SHAPE_ID, api.CONFIG_INNER_SHAPE_ID,
)


@dataclass(frozen=True)
class AlgoConfig:
    """One cuBLASLt algorithm configuration; fields in spec order (``algo_id`` is ``id=``)."""

    algo_id: int
    tile: int = 0
    stages: int = 0
    splitk: int = 1
    red: int = 0
    swizzle: int = 0
    custom: int = 0
    cluster: int = 0
    inner: int = 0

    @property
    def spec(self) -> str:
        fields = dict(zip(_SPEC_KEYS, dataclasses.astuple(self)))
        if not self.inner:
            del fields["inner"]
        return format_spec(LIBTYPE, fields)

    @classmethod
    def parse(cls, spec: str) -> AlgoConfig:
        """The configuration a spec names; ValueError naming the spec if it is malformed."""
        libtype, fields = parse_spec(spec)
        if libtype != LIBTYPE:
            raise ValueError(f"not a {LIBTYPE} spec: {spec!r}")
        missing = [key for key in _SPEC_KEYS[:-1] if key not in fields]
        unknown = [key for key in fields if key not in _SPEC_KEYS]
        if missing or unknown:
            raise ValueError(
                f"cublaslt spec {spec!r}: missing fields {missing}, unknown fields {unknown} "
                f"(expected {','.join(_SPEC_KEYS[:-1])}[,inner])"
            )
        values = []
        for key in _SPEC_KEYS:
            text = fields.get(key, "0")
            if not text.isdigit():
                raise ValueError(f"cublaslt spec {spec!r}: {key}={text!r} is not an integer >= 0")
            values.append(int(text))
        config = cls(*values)
        if config.splitk < 1:
            raise ValueError(f"cublaslt spec {spec!r}: splitk must be at least 1")
        return config


@dataclass(frozen=True)
class AlgoCaps:
    """What one algorithm id supports for a type combination (AlgoCapGetAttribute)."""

    tiles: tuple[int, ...]
    stages: tuple[int, ...]
    splitk: bool
    red_mask: int
    swizzle: bool
    custom_max: int
    epilogue_mask: int


def _distance(a: AlgoConfig, b: AlgoConfig) -> int:
    """How many of split-K (with its reduction scheme), swizzle, custom option and cluster
    shape differ."""
    return ((a.splitk, a.red) != (b.splitk, b.red)) + (a.swizzle != b.swizzle) + (
        a.custom != b.custom) + (a.cluster != b.cluster)


def neighbours(
    config: AlgoConfig, caps: AlgoCaps, k: int, clusters: tuple[int, ...] = ()
) -> list[AlgoConfig]:
    """The same kernel (id, tile, stages, inner shape) with every split-K factor (each split at
    least ``MIN_K_PER_SPLIT`` deep), reduction scheme, swizzle, custom option and cluster shape
    (its own or one of ``clusters``), fewest changes first."""
    splits = (1,)
    if caps.splitk:
        splits += tuple(s for s in SPLITK_FACTORS if k // s >= MIN_K_PER_SPLIT)
    found = []
    for splitk in splits:
        reds = (0,) if splitk == 1 else tuple(r for r in api.REDUCTION_SCHEMES if caps.red_mask & r)
        for red in reds:
            for swizzle in (0, 1) if caps.swizzle else (0,):
                for custom in range(caps.custom_max + 1):
                    for cluster in dict.fromkeys((config.cluster, *clusters)):
                        found.append(dataclasses.replace(
                            config, splitk=splitk, red=red, swizzle=swizzle, custom=custom,
                            cluster=cluster))
    return sorted(found, key=lambda c: _distance(c, config))


def bases(algo_id: int, caps: AlgoCaps) -> Iterator[AlgoConfig]:
    """Every (tile, stages) of an algorithm id, without split-K."""
    for tile in caps.tiles or (0,):
        for stages in caps.stages or (0,):
            yield AlgoConfig(algo_id, tile, stages)


def round_robin(iterables: Iterable[Iterable[AlgoConfig]]) -> Iterator[AlgoConfig]:
    for group in zip_longest(*iterables):
        yield from (config for config in group if config is not None)


def candidate_configs(
    heuristic: list[AlgoConfig], caps: dict[int, AlgoCaps], k: int
) -> Iterator[AlgoConfig]:
    """Configurations to try, best guesses first (may repeat; the caller deduplicates): the
    heuristic's picks; their neighbours (also with the cluster shapes of the other picks); every
    id's bases, the heuristic's ids first; then the bases' neighbours. Kernels and ids take
    turns so that a bounded list still covers all of them."""
    yield from heuristic
    clusters = tuple(dict.fromkeys(c.cluster for c in heuristic))
    yield from round_robin(
        neighbours(c, caps[c.algo_id], k, clusters) for c in heuristic if c.algo_id in caps)
    picked = {c.algo_id for c in heuristic}
    ids = sorted(caps, key=lambda i: i not in picked)
    yield from round_robin(bases(i, caps[i]) for i in ids)
    yield from round_robin(_bases_and_neighbours(i, caps[i], k) for i in ids)


def _bases_and_neighbours(algo_id: int, caps: AlgoCaps, k: int) -> Iterator[AlgoConfig]:
    return chain.from_iterable(neighbours(b, caps, k) for b in bases(algo_id, caps))


def unsupported_reason(problem: GemmProblem) -> str | None:
    """Why this backend cannot compute a problem, or None if it can."""
    if problem.is_fp8:
        if problem.dtype != torch.float8_e4m3fn:
            return f"cuBLASLt fp8 needs e4m3 × e4m3 operands, not {dtype_name(problem.dtype)}"
        if problem.outdtype not in (torch.bfloat16, torch.float16, torch.float32):
            return f"fp8 into {dtype_name(problem.outdtype)} is unsupported (bf16, fp16, fp32 are)"
        if problem.bias and problem.outdtype == torch.float32:
            return "cuBLASLt's fp8 kernels want a bf16 bias with fp32 output; gradlib's is fp32"
        return None
    if problem.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"operand dtype {dtype_name(problem.dtype)} is not supported"
    if problem.outdtype != problem.dtype:
        return "16/32-bit problems need outdtype == dtype"
    return None


@dataclass
class _Device:
    handle: ctypes.c_void_p
    workspace: torch.Tensor


_DEVICES: dict[int, _Device] = {}


def _device(index: int) -> _Device:
    """The device's cuBLASLt handle and its workspace (``WORKSPACE_BYTES``, shared by every
    solution of the device: solutions run one at a time, on the current stream)."""
    if index not in _DEVICES:
        lib = api.library()
        with torch.cuda.device(index):
            handle = ctypes.c_void_p()
            api.call(lib, "cublasLtCreate", ctypes.byref(handle))
            workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=f"cuda:{index}")
        _DEVICES[index] = _Device(handle, workspace)
    return _DEVICES[index]


class _Plan:
    """The cuBLASLt descriptors of one (M, K, bias, dtypes) on one device: matmul descriptor,
    A's layout, the B and C/D layouts of each token count (made on first use), a heuristic
    preference. Shared by all solutions of those problems; built once, never per call."""

    def __init__(self, problem: GemmProblem, device_index: int) -> None:
        self.lib = api.library()
        self.problem = problem
        self.device_index = device_index
        self.device = _device(device_index)
        self.handle = self.device.handle
        in_type = api.CUDA_DTYPES[problem.dtype]
        self.out_type = api.CUDA_DTYPES[problem.outdtype]
        compute, scale = api.CUBLAS_COMPUTE_32F, api.CUDA_R_32F
        self.types = (compute, scale, in_type, in_type, self.out_type, self.out_type)
        self.desc = self._create("MatmulDesc", compute, scale)
        self._set_desc(api.MATMUL_DESC_TRANSA, ctypes.c_int32(api.CUBLAS_OP_T))
        self._set_desc(api.MATMUL_DESC_TRANSB, ctypes.c_int32(api.CUBLAS_OP_N))
        if problem.bias:
            self._set_desc(api.MATMUL_DESC_EPILOGUE, ctypes.c_uint32(api.EPILOGUE_BIAS))
        # Until run() binds real operands, the pointers point at the workspace: the heuristic
        # and AlgoCheck read only their alignment, as they do when torch calls them.
        placeholder = self.device.workspace.data_ptr()
        self._bound: tuple[int, ...] = ()
        self._bind(placeholder, placeholder, placeholder)
        self.layout_a = self._create("MatrixLayout", in_type, problem.K, problem.M, problem.K)
        self._layouts: dict[int, tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}
        self.preference = self._create("MatmulPreference")
        limit = ctypes.c_uint64(WORKSPACE_BYTES)
        api.call(self.lib, "cublasLtMatmulPreferenceSetAttribute", self.preference,
                 api.PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit), ctypes.sizeof(limit))
        self._alpha, self._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def _create(self, kind: str, *args: object) -> ctypes.c_void_p:
        """``cublasLt<kind>Create``, destroyed with this plan."""
        obj = ctypes.c_void_p()
        api.call(self.lib, f"cublasLt{kind}Create", ctypes.byref(obj), *args)
        weakref.finalize(self, getattr(self.lib, f"cublasLt{kind}Destroy"), obj)
        return obj

    def _set_desc(self, attr: int, value: ctypes._SimpleCData) -> None:
        api.call(self.lib, "cublasLtMatmulDescSetAttribute", self.desc, attr,
                 ctypes.byref(value), ctypes.sizeof(value))

    def layouts(self, n: int) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """B (x as K×n) and C/D (y as M×n) layouts for ``n`` tokens."""
        if n not in self._layouts:
            p = self.problem
            self._layouts[n] = (self._create("MatrixLayout", self.types[2], p.K, n, p.K),
                                self._create("MatrixLayout", self.out_type, p.M, n, p.M))
        return self._layouts[n]

    def _bind(self, scale_w: int, scale_x: int, bias: int) -> None:
        """Point the descriptor at this call's scales and bias (only when they changed)."""
        pointers = (scale_w, scale_x, bias)
        if pointers == self._bound:
            return
        if self.problem.is_fp8:
            self._set_desc(api.MATMUL_DESC_A_SCALE_POINTER, ctypes.c_void_p(scale_w))
            self._set_desc(api.MATMUL_DESC_B_SCALE_POINTER, ctypes.c_void_p(scale_x))
        if self.problem.bias:
            self._set_desc(api.MATMUL_DESC_BIAS_POINTER, ctypes.c_void_p(bias))
        self._bound = pointers

    # -- algorithms -------------------------------------------------------------------------

    def heuristic(self, n: int, count: int) -> list[api.MatmulAlgo]:
        """The heuristic's picks for ``n`` tokens, best first (empty if none apply)."""
        results = (api.HeuristicResult * count)()
        returned = ctypes.c_int()
        layout_b, layout_d = self.layouts(n)
        status = self.lib.cublasLtMatmulAlgoGetHeuristic(
            self.handle, self.desc, self.layout_a, layout_b, layout_d, layout_d,
            self.preference, count, results, ctypes.byref(returned))
        if status == api.CUBLAS_STATUS_NOT_SUPPORTED:  # no kernel for these types on this device
            return []
        api.check(status, "cublasLtMatmulAlgoGetHeuristic")
        return [r.algo for r in results[: returned.value]
                if r.state == api.CUBLAS_STATUS_SUCCESS and r.workspaceSize <= WORKSPACE_BYTES]

    def algo_ids(self) -> list[int]:
        ids, returned = (ctypes.c_int * 1024)(), ctypes.c_int()
        api.call(self.lib, "cublasLtMatmulAlgoGetIds", self.handle, *self.types, len(ids), ids,
                 ctypes.byref(returned))
        return list(ids[: returned.value])

    def _init(self, algo_id: int) -> api.MatmulAlgo | None:
        algo = api.MatmulAlgo()
        status = self.lib.cublasLtMatmulAlgoInit(self.handle, *self.types, algo_id,
                                                 ctypes.byref(algo))
        return algo if status == api.CUBLAS_STATUS_SUCCESS else None

    def caps(self, algo_id: int) -> AlgoCaps | None:
        """An algorithm id's capabilities for these types, or None if it does not apply or the
        library cannot report them."""
        algo = self._init(algo_id)
        if algo is None:
            return None
        written = ctypes.c_size_t()

        def get(attr: int, buf: object, size: int) -> None:
            api.call(self.lib, "cublasLtMatmulAlgoCapGetAttribute", ctypes.byref(algo), attr,
                     buf, size, ctypes.byref(written))

        def scalar(attr: int, ctype: type = ctypes.c_uint32) -> int:
            value = ctype()
            get(attr, ctypes.byref(value), ctypes.sizeof(value))
            return value.value

        def ids(attr: int) -> tuple[int, ...]:
            get(attr, None, 0)  # asks for the size
            values = (ctypes.c_uint32 * (written.value // 4))()
            get(attr, values, ctypes.sizeof(values))
            return tuple(v for v in values[: written.value // 4] if v != 0)

        try:
            return AlgoCaps(
                tiles=ids(api.CAP_TILE_IDS),
                stages=ids(api.CAP_STAGES_IDS),
                splitk=bool(scalar(api.CAP_SPLITK_SUPPORT, ctypes.c_int32)),
                red_mask=scalar(api.CAP_REDUCTION_SCHEME_MASK),
                swizzle=bool(scalar(api.CAP_CTA_SWIZZLING_SUPPORT)),
                custom_max=scalar(api.CAP_CUSTOM_OPTION_MAX, ctypes.c_int32),
                epilogue_mask=scalar(api.CAP_EPILOGUE_MASK),
            )
        except RuntimeError:  # a library that will not describe an id: enumerate without it
            return None

    def config_of(self, algo: api.MatmulAlgo) -> AlgoConfig:
        values = []
        written = ctypes.c_size_t()
        for attr in _CONFIG_ATTRS:
            value = api.CONFIG_CTYPES[attr]()
            api.call(self.lib, "cublasLtMatmulAlgoConfigGetAttribute", ctypes.byref(algo), attr,
                     ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written))
            values.append(value.value)
        return AlgoConfig(*values)

    def build(self, config: AlgoConfig) -> api.MatmulAlgo:
        """``cublasLtMatmulAlgoInit`` + every configuration attribute; ValueError if refused."""
        algo = self._init(config.algo_id)
        if algo is None:
            raise ValueError(f"{config.spec}: no algo id {config.algo_id} for {self.problem}")
        for attr, value in zip(_CONFIG_ATTRS[1:], dataclasses.astuple(config)[1:]):
            buf = api.CONFIG_CTYPES[attr](value)
            status = self.lib.cublasLtMatmulAlgoConfigSetAttribute(
                ctypes.byref(algo), attr, ctypes.byref(buf), ctypes.sizeof(buf))
            if status != api.CUBLAS_STATUS_SUCCESS:
                raise ValueError(f"{config.spec}: cuBLASLt refuses config attribute {attr}={value}"
                                 f" ({api.status_name(status)})")
        return algo

    def check(self, algo: api.MatmulAlgo, n: int) -> int | None:
        """Workspace bytes the algorithm needs for ``n`` tokens, or None if AlgoCheck refuses it
        or it needs more than ``WORKSPACE_BYTES``."""
        result = api.HeuristicResult()
        layout_b, layout_d = self.layouts(n)
        status = self.lib.cublasLtMatmulAlgoCheck(
            self.handle, self.desc, self.layout_a, layout_b, layout_d, layout_d,
            ctypes.byref(algo), ctypes.byref(result))
        if status != api.CUBLAS_STATUS_SUCCESS or result.workspaceSize > WORKSPACE_BYTES:
            return None
        return result.workspaceSize

    # -- running ----------------------------------------------------------------------------

    def _check_operands(self, ops: GemmOperands) -> None:
        p, x, w = self.problem, ops.x, ops.w
        if x.dim() != 2 or x.shape[1] != p.K or tuple(w.shape) != (p.M, p.K):
            raise ValueError(
                f"operands x{tuple(x.shape)}, w{tuple(w.shape)} do not fit M={p.M} K={p.K}")
        if x.dtype != p.dtype or w.dtype != p.dtype:
            raise ValueError(f"operands are {x.dtype}/{w.dtype}, the problem is {p.dtype}")
        if not (x.is_contiguous() and w.is_contiguous()):
            raise ValueError("cuBLASLt solutions need contiguous row-major x and w")
        if x.device.index != self.device_index or w.device != x.device or x.device.type != "cuda":
            raise ValueError(f"operands on {x.device}/{w.device}; the solution runs on "
                             f"cuda:{self.device_index}")
        if p.is_fp8 and (ops.scale_x is None or ops.scale_w is None):
            raise ValueError("fp8 problems need scale_x and scale_w")
        if p.bias and ops.bias is None:
            raise ValueError("the problem has a bias but the operands carry none")

    def matmul(self, algo: api.MatmulAlgo, ops: GemmOperands, workspace_bytes: int) -> torch.Tensor:
        """``y = (x·sx) @ (w·sw)ᵀ + bias`` on the current stream into a new tensor."""
        self._check_operands(ops)
        x, w = ops.x, ops.w
        n = x.shape[0]
        out = torch.empty((n, self.problem.M), dtype=self.problem.outdtype, device=x.device)
        self._bind(*(t.data_ptr() if t is not None else 0
                     for t in (ops.scale_w, ops.scale_x, ops.bias)))
        layout_b, layout_d = self.layouts(n)
        api.call(
            self.lib, "cublasLtMatmul", self.handle, self.desc, ctypes.addressof(self._alpha),
            w.data_ptr(), self.layout_a, x.data_ptr(), layout_b, ctypes.addressof(self._beta),
            out.data_ptr(), layout_d, out.data_ptr(), layout_d, ctypes.byref(algo),
            self.device.workspace.data_ptr(), workspace_bytes,
            torch.cuda.current_stream(x.device).cuda_stream)
        return out


class CublasLtSolution(Solution):
    """One checked cuBLASLt configuration. Accepts every token count AlgoCheck accepts."""

    libtype = LIBTYPE

    def __init__(self, problem: GemmProblem, plan: _Plan, config: AlgoConfig, algo: api.MatmulAlgo,
                 workspace_bytes: int) -> None:
        self.problem = problem
        self.config = config
        self._plan = plan
        self._algo = algo
        self._workspace: dict[int, int | None] = {problem.N: workspace_bytes}

    @property
    def spec(self) -> str:
        return self.config.spec

    @property
    def workspace_bytes(self) -> int:
        """Workspace this configuration needs at ``problem.N``."""
        return self._workspace[self.problem.N] or 0

    def _workspace_for(self, n: int) -> int | None:
        if n not in self._workspace:
            self._workspace[n] = self._plan.check(self._algo, n) if n > 0 else None
        return self._workspace[n]

    def accepts(self, n: int) -> bool:
        return self._workspace_for(n) is not None

    def run(self, ops: GemmOperands) -> torch.Tensor:
        n = ops.x.shape[0]
        workspace = self._workspace_for(n)
        if workspace is None:
            raise ValueError(f"{self.spec} does not accept N={n} for {self.problem}")
        return self._plan.matmul(self._algo, ops, workspace)


class CublasLtBackend(Backend):
    """cuBLASLt through ctypes; see the module docstring for problems and candidates."""

    libtype = LIBTYPE

    def __init__(
        self, max_candidates: int = MAX_CANDIDATES, heuristic_count: int = HEURISTIC_COUNT
    ) -> None:
        if max_candidates < 1 or heuristic_count < 1:
            raise ValueError("max_candidates and heuristic_count must be positive")
        self.max_candidates = max_candidates
        self.heuristic_count = heuristic_count
        self._plans: dict[tuple, _Plan] = {}

    def available(self) -> tuple[bool, str]:
        if torch.version.hip:
            return False, "ROCm build of torch: use the hipblaslt backend"
        if not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
        lib, why = api.load()
        return (True, "") if lib is not None else (False, why)

    def _require_available(self) -> None:
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"cublaslt backend unavailable: {why}")

    def version(self) -> str:
        """e.g. ``cublasLt-130100``; RuntimeError if the backend is unavailable."""
        self._require_available()
        return f"cublasLt-{api.library().cublasLtGetVersion()}"

    def _plan(self, problem: GemmProblem) -> _Plan:
        index = torch.cuda.current_device()
        key = (index, problem.M, problem.K, problem.bias, problem.dtype, problem.outdtype)
        if key not in self._plans:
            self._plans[key] = _Plan(problem, index)
        return self._plans[key]

    def solutions(self, problem: GemmProblem, max_candidates: int | None = None) -> list[Solution]:
        """Checked candidates on the current device, heuristic picks first, at most
        ``max_candidates`` (default: the backend's); empty where the backend or the problem is
        unsupported."""
        if not self.available()[0] or unsupported_reason(problem):
            return []
        limit = max_candidates or self.max_candidates
        plan = self._plan(problem)
        picks = plan.heuristic(problem.N, self.heuristic_count)
        heuristic = [plan.config_of(algo) for algo in picks]
        if not heuristic:
            return []
        caps = {}
        for algo_id in plan.algo_ids():
            cap = plan.caps(algo_id)
            if cap is not None and (not problem.bias or cap.epilogue_mask & api.EPILOGUE_BIAS):
                caps[algo_id] = cap
        found: list[Solution] = []
        seen: set[AlgoConfig] = set()
        for config in candidate_configs(heuristic, caps, problem.K):
            if len(found) >= limit or len(seen) >= CHECKS_PER_CANDIDATE * limit:
                break
            if config in seen:
                continue
            seen.add(config)
            try:
                algo = plan.build(config)
            except ValueError:
                continue
            workspace = plan.check(algo, problem.N)
            if workspace is not None:
                found.append(CublasLtSolution(problem, plan, config, algo, workspace))
        return found

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        """Rebuild a solution on the current device; ValueError naming the spec if it is
        malformed or the library refuses it for the problem."""
        config = AlgoConfig.parse(spec)
        self._require_available()
        reason = unsupported_reason(problem)
        if reason:
            raise ValueError(f"{spec}: {reason}")
        plan = self._plan(problem)
        algo = plan.build(config)
        workspace = plan.check(algo, problem.N)
        if workspace is None:
            raise ValueError(
                f"{spec}: cublasLtMatmulAlgoCheck refuses it for {problem} on "
                f"{torch.cuda.get_device_name()}, or it needs more than {WORKSPACE_BYTES} bytes "
                "of workspace"
            )
        return CublasLtSolution(problem, plan, config, algo, workspace)
