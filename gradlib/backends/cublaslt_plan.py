"""The cuBLASLt calls of one GEMM problem, through ctypes: descriptors, algorithm queries, the
matmul.

Layout: gradlib's row-major ``x[N, K]``, ``w[M, K]``, ``y[N, M]`` read column-major are
``D(M×N, ld M) = Aᵀ·B`` with ``A = w`` as K×M (ld K) and ``B = x`` as K×N (ld K): the "TN"
form that Hopper's fp8 kernels require. A's scale is ``scale_w``, B's is ``scale_x``.

A configuration (:class:`~solidx.gradlib.backends.cublaslt_configs.AlgoConfig`) becomes a
``cublasLtMatmulAlgo_t`` through :meth:`MatmulPlan.build`; :meth:`MatmulPlan.check` says
whether ``cublasLtMatmulAlgoCheck`` accepts it and with how much workspace.
"""
from __future__ import annotations

import ctypes
import dataclasses
import weakref
from dataclasses import dataclass

import torch

from solidx.gradlib.backends import cublaslt_api as api
from solidx.gradlib.backends.base import WORKSPACE_BYTES
from solidx.gradlib.backends.cublaslt_configs import AlgoCaps, AlgoConfig
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem

_CONFIG_ATTRS = (  # cublasLtMatmulAlgoConfigAttributes_t in AlgoConfig's field order
    api.CONFIG_ID, api.CONFIG_TILE_ID, api.CONFIG_STAGES_ID, api.CONFIG_SPLITK_NUM,
    api.CONFIG_REDUCTION_SCHEME, api.CONFIG_CTA_SWIZZLING, api.CONFIG_CUSTOM_OPTION,
    api.CONFIG_CLUSTER_SHAPE_ID, api.CONFIG_INNER_SHAPE_ID,
)


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


class MatmulPlan:
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
