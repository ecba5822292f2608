"""The Lt calls of one GEMM problem, for either vendor (cuBLASLt, hipBLASLt): handle, matmul and
layout descriptors, preference, heuristic, matmul. What differs between vendors comes from their
:class:`~solidx.gradlib.backends.lt_vendor.LtVendor`.

Layout: gradlib's row-major ``x[N, K]``, ``w[M, K]``, ``y[N, M]`` read column-major are
``D(M×N, ld M) = Aᵀ·B`` with ``A = w`` as K×M (ld K) and ``B = x`` as K×N (ld K): the "TN" form
that fp8 kernels require. A's scale is ``scale_w``, B's is ``scale_x``.

Device: a CUDA/HIP device, or ``cpu`` for an ABI stand-in library that reads host memory (the
operands' pointers are then host pointers and the stream is null).
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import torch

from solidx.gradlib.backends import lt_api
from solidx.gradlib.backends.base import WORKSPACE_BYTES
from solidx.gradlib.backends.lt_vendor import STATUS_SUCCESS, LtVendor
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem


@dataclass
class _Device:
    handle: ctypes.c_void_p
    workspace: torch.Tensor


_DEVICES: dict[tuple, _Device] = {}


def _device(vendor: LtVendor, lib: ctypes.CDLL, device: torch.device) -> _Device:
    """The library handle of a device and its workspace (``WORKSPACE_BYTES``, shared by every
    solution of the device: solutions run one at a time, on the current stream)."""
    key = (vendor.name, id(lib), device)
    if key not in _DEVICES:
        handle = ctypes.c_void_p()
        if device.type == "cuda":
            with torch.cuda.device(device):
                lt_api.call(vendor, lib, "Create", ctypes.byref(handle))
        else:
            lt_api.call(vendor, lib, "Create", ctypes.byref(handle))
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        _DEVICES[key] = _Device(handle, workspace)
    return _DEVICES[key]


def library_version(vendor: LtVendor, lib: ctypes.CDLL, device: torch.device) -> int:
    """The library's version number (``<prefix>GetVersion``)."""
    if not vendor.version_takes_handle:
        fn = getattr(lib, vendor.prefix + "GetVersion")
        fn.restype, fn.argtypes = ctypes.c_size_t, []
        return int(fn())
    version = ctypes.c_int()
    lt_api.call(vendor, lib, "GetVersion", _device(vendor, lib, device).handle,
                ctypes.byref(version))
    return version.value


class LtPlan:
    """The descriptors of one (M, K, bias, dtypes) on one device: matmul descriptor, A's
    layout, the B and C/D layouts of each token count (made on first use), a heuristic
    preference. Shared by all solutions of those problems; built once, never per call."""

    def __init__(self, vendor: LtVendor, lib: ctypes.CDLL, problem: GemmProblem,
                 device: torch.device) -> None:
        self.vendor, self.lib, self.problem, self.device = vendor, lib, problem, device
        self.state = _device(vendor, lib, device)
        self.handle = self.state.handle
        in_type = vendor.dtypes[problem.dtype]
        self.out_type = vendor.dtypes[problem.outdtype]
        self.types = (vendor.compute_32f, vendor.r_32f, in_type, in_type, self.out_type,
                      self.out_type)
        self.desc = self._create("MatmulDesc", vendor.compute_32f, vendor.r_32f)
        self._set_desc("transa", ctypes.c_int32(vendor.op_t))
        self._set_desc("transb", ctypes.c_int32(vendor.op_n))
        if problem.bias:
            self._set_desc("epilogue", ctypes.c_uint32(vendor.epilogue_bias))
        # Until run() binds real operands, the pointers point at the workspace: the heuristic
        # and the checks read only their alignment, as they do when torch calls them.
        placeholder = self.state.workspace.data_ptr()
        self._bound: tuple[int, ...] = ()
        self._bind(placeholder, placeholder, placeholder)
        self.layout_a = self._create("MatrixLayout", in_type, problem.K, problem.M, problem.K)
        self._layouts: dict[int, tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}
        self.preference = self._create("MatmulPreference")
        limit = ctypes.c_uint64(WORKSPACE_BYTES)
        lt_api.call(vendor, self.lib, "MatmulPreferenceSetAttribute", self.preference,
                    vendor.pref_max_workspace_bytes, ctypes.byref(limit), ctypes.sizeof(limit))
        self._alpha, self._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def _create(self, kind: str, *args: object) -> ctypes.c_void_p:
        """``<prefix><kind>Create``, destroyed with this plan."""
        obj = ctypes.c_void_p()
        lt_api.call(self.vendor, self.lib, f"{kind}Create", ctypes.byref(obj), *args)
        weakref.finalize(self, getattr(self.lib, f"{self.vendor.prefix}{kind}Destroy"), obj)
        return obj

    def _set_desc(self, attr: str, value: ctypes._SimpleCData) -> None:
        lt_api.call(self.vendor, self.lib, "MatmulDescSetAttribute", self.desc,
                    self.vendor.desc[attr], ctypes.byref(value), ctypes.sizeof(value))

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
            self._set_desc("a_scale_pointer", ctypes.c_void_p(scale_w))
            self._set_desc("b_scale_pointer", ctypes.c_void_p(scale_x))
        if self.problem.bias:
            self._set_desc("bias_pointer", ctypes.c_void_p(bias))
        self._bound = pointers

    def heuristic(self, n: int, count: int) -> list:
        """The heuristic's results for ``n`` tokens, best first: only those whose state is
        success and whose workspace fits ``WORKSPACE_BYTES`` (empty if none apply)."""
        results = (self.vendor.result * count)()
        returned = ctypes.c_int()
        layout_b, layout_d = self.layouts(n)
        status = getattr(self.lib, self.vendor.prefix + "MatmulAlgoGetHeuristic")(
            self.handle, self.desc, self.layout_a, layout_b, layout_d, layout_d,
            self.preference, count, results, ctypes.byref(returned))
        if status == self.vendor.status_not_supported:  # no kernel for these types here
            return []
        lt_api.check(self.vendor, status, self.vendor.prefix + "MatmulAlgoGetHeuristic")
        return [r for r in results[: returned.value]
                if r.state == STATUS_SUCCESS and r.workspaceSize <= WORKSPACE_BYTES]

    def check_operands(self, ops: GemmOperands) -> None:
        """ValueError unless the operands fit the problem and live on the plan's device."""
        p, x, w = self.problem, ops.x, ops.w
        if x.dim() != 2 or x.shape[1] != p.K or tuple(w.shape) != (p.M, p.K):
            raise ValueError(
                f"operands x{tuple(x.shape)}, w{tuple(w.shape)} do not fit M={p.M} K={p.K}")
        if x.dtype != p.dtype or w.dtype != p.dtype:
            raise ValueError(f"operands are {x.dtype}/{w.dtype}, the problem is {p.dtype}")
        if not (x.is_contiguous() and w.is_contiguous()):
            raise ValueError(f"{self.vendor.name} solutions need contiguous row-major x and w")
        if x.device != self.device or w.device != x.device:
            raise ValueError(f"operands on {x.device}/{w.device}; the solution runs on "
                             f"{self.device}")
        if p.is_fp8 and (ops.scale_x is None or ops.scale_w is None):
            raise ValueError("fp8 problems need scale_x and scale_w")
        if p.bias and ops.bias is None:
            raise ValueError("the problem has a bias but the operands carry none")

    def matmul(self, algo: ctypes.Structure, ops: GemmOperands,
               workspace_bytes: int) -> torch.Tensor:
        """``y = (x·sx) @ (w·sw)ᵀ + bias`` on the current stream into a new tensor; RuntimeError
        naming the status if the library refuses."""
        self.check_operands(ops)
        x, w = ops.x, ops.w
        n = x.shape[0]
        out = torch.empty((n, self.problem.M), dtype=self.problem.outdtype, device=x.device)
        self._bind(*(t.data_ptr() if t is not None else 0
                     for t in (ops.scale_w, ops.scale_x, ops.bias)))
        layout_b, layout_d = self.layouts(n)
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else None
        lt_api.call(
            self.vendor, self.lib, "Matmul", self.handle, self.desc,
            ctypes.addressof(self._alpha), w.data_ptr(), self.layout_a, x.data_ptr(), layout_b,
            ctypes.addressof(self._beta), out.data_ptr(), layout_d, out.data_ptr(), layout_d,
            ctypes.byref(algo), self.state.workspace.data_ptr(), workspace_bytes, stream)
        return out
