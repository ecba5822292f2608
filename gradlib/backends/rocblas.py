"""``rocblas``: rocBLAS's solutions of a 16-bit GEMM (as gradlib: bf16/fp16 into the same dtype,
fp32 compute), called through ctypes.

Candidates: ``rocblas_gemm_ex_get_solutions`` (rocBLAS's beta API; a null list returns the
count) for the problem, each confirmed with ``rocblas_gemm_ex`` under
``rocblas_gemm_algo_solution_index`` and the ``check_solution_index`` flag. A spec is
``rocblas:index=I`` and the CSV ``solidx`` is ``I``; a bias is added after the GEMM, as gradlib
does (``rocblas_gemm_ex`` has no epilogue).

Values from ``ROCm/rocBLAS`` ``library/include/internal/rocblas-types.h`` (operations, data types,
``rocblas_gemm_algo``, ``rocblas_gemm_flags``, status) and ``rocblas-beta.h``
(``rocblas_gemm_ex_get_solutions``). Library: ``library=`` or the copy mapped, torch's
``torch/lib``, ``ROCM_HOME``/``ROCM_PATH``'s ``lib``, ``/opt/rocm/lib``, the loader path;
``device="cpu"`` runs host pointers for an ABI stand-in only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from functools import cache

import torch

from solidx.gradlib.backends import lt_api
from solidx.gradlib.backends.base import Solution, format_spec, parse_spec
from solidx.gradlib.backends.rocm_library import RocmLibraryBackend
from solidx.gradlib.dtypes import dtype_name
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem

LIBTYPE = "rocblas"
OPERATION_NONE, OPERATION_TRANSPOSE = 111, 112
DATATYPES = {torch.float16: 150, torch.float32: 151, torch.bfloat16: 168}
GEMM_ALGO_SOLUTION_INDEX = 1
GEMM_FLAGS_NONE, GEMM_FLAGS_CHECK_SOLUTION_INDEX = 0, 0x8
STATUS = {0: "rocblas_status_success", 1: "rocblas_status_invalid_handle",
          2: "rocblas_status_not_implemented", 3: "rocblas_status_invalid_pointer",
          4: "rocblas_status_invalid_size", 5: "rocblas_status_memory_error",
          6: "rocblas_status_internal_error", 11: "rocblas_status_invalid_value",
          15: "rocblas_status_arch_mismatch"}

_p, _i, _u32, _sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint32, ctypes.c_size_t
_GEMM = [_p, _i, _i, _i, _i, _i, _p, _p, _i, _i, _p, _i, _i, _p, _p, _i, _i, _p, _i, _i, _i, _i]
SIGNATURES: dict[str, list] = {
    "rocblas_create_handle": [ctypes.POINTER(_p)],
    "rocblas_set_stream": [_p, _p],
    "rocblas_get_version_string_size": [ctypes.POINTER(_sz)],
    "rocblas_get_version_string": [ctypes.c_char_p, _sz],
    "rocblas_gemm_ex_get_solutions": _GEMM + [_u32, ctypes.POINTER(_i), ctypes.POINTER(_i)],
    "rocblas_gemm_ex": _GEMM + [_i, _u32],
}


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed: {STATUS.get(status, f'rocblas_status {status}')}")


def unsupported_reason(problem: GemmProblem) -> str | None:
    """Why rocBLAS (as gradlib uses it) cannot compute a problem, or None."""
    if problem.dtype not in (torch.bfloat16, torch.float16):
        return f"rocBLAS solutions are 16-bit only (bf16, fp16), not {dtype_name(problem.dtype)}"
    if problem.outdtype != problem.dtype:
        return "16-bit problems need outdtype == dtype"
    return None


def library_candidates(maps_text: str, torch_lib: str, rocm_home: str | None,
                       loader_name: str | None) -> list[str]:
    """Where to look for librocblas, best first (as for hipBLASLt); no duplicates."""
    dirs = [torch_lib] + [os.path.join(h, "lib") for h in (rocm_home, "/opt/rocm") if h]
    paths = lt_api.mapped_paths(maps_text, "librocblas.so")
    paths += lt_api.globbed(dirs, "librocblas.so*")
    return list(dict.fromkeys(paths + ([loader_name] if loader_name else [])))


@cache
def load(path: str | None = None) -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of ``path`` or of the first librocblas found, or ``(None, why)``."""
    if path is not None:
        candidates = [path]
    else:
        candidates = library_candidates(lt_api.maps_text(), lt_api.torch_lib_dir(),
                                        lt_api.rocm_home(), ctypes.util.find_library("rocblas"))
    return lt_api.load_first(candidates, SIGNATURES, "librocblas")


@dataclass
class _Call:
    """rocblas_gemm_ex's arguments for gradlib's layout: ``D(M×N) = Wᵀ(M×K)·X(K×N)``
    column-major, ``A = w`` (ld K, transposed), ``B = x`` (ld K), ``C = D = y`` (ld M)."""

    lib: ctypes.CDLL
    handle: ctypes.c_void_p
    problem: GemmProblem

    def args(self, n: int, w: int, x: int, y: int) -> tuple:
        p, t = self.problem, DATATYPES[self.problem.dtype]
        alpha, beta = ctypes.byref(_ALPHA), ctypes.byref(_BETA)
        return (self.handle, OPERATION_TRANSPOSE, OPERATION_NONE, p.M, n, p.K, alpha, w, t, p.K,
                x, t, p.K, beta, y, t, p.M, y, t, p.M, DATATYPES[torch.float32],
                GEMM_ALGO_SOLUTION_INDEX)

    def solutions(self, n: int, placeholder: int) -> list[int]:
        args = self.args(n, placeholder, placeholder, placeholder)
        count = ctypes.c_int32()
        _check(self.lib.rocblas_gemm_ex_get_solutions(*args, GEMM_FLAGS_NONE, None,
                                                      ctypes.byref(count)),
               "rocblas_gemm_ex_get_solutions")
        indices = (ctypes.c_int32 * count.value)()
        _check(self.lib.rocblas_gemm_ex_get_solutions(*args, GEMM_FLAGS_NONE, indices,
                                                      ctypes.byref(count)),
               "rocblas_gemm_ex_get_solutions")
        return list(dict.fromkeys(indices[: count.value]))

    def valid(self, index: int, n: int, placeholder: int) -> bool:
        args = self.args(n, placeholder, placeholder, placeholder)
        return self.lib.rocblas_gemm_ex(*args, index, GEMM_FLAGS_CHECK_SOLUTION_INDEX) == 0


_ALPHA, _BETA = ctypes.c_float(1.0), ctypes.c_float(0.0)


class RocBlasSolution(Solution):
    """One rocBLAS solution index for one problem (at the problem's token count)."""

    libtype = LIBTYPE

    def __init__(self, problem: GemmProblem, call: _Call, index: int, device: torch.device):
        self.problem, self._call, self.index, self.device = problem, call, index, device

    @property
    def spec(self) -> str:
        return format_spec(LIBTYPE, {"index": self.index})

    @property
    def solidx(self) -> int:
        return self.index

    def run(self, ops: GemmOperands) -> torch.Tensor:
        p, x, w = self.problem, ops.x, ops.w
        if x.dim() != 2 or x.shape[1] != p.K or tuple(w.shape) != (p.M, p.K):
            raise ValueError(f"operands x{tuple(x.shape)}, w{tuple(w.shape)} do not fit "
                             f"M={p.M} K={p.K}")
        if x.dtype != p.dtype or w.dtype != p.dtype or {x.device, w.device} != {self.device}:
            raise ValueError(f"operands {x.dtype} on {x.device}; the solution runs {p.dtype} on "
                             f"{self.device}")
        if not (x.is_contiguous() and w.is_contiguous()):
            raise ValueError("rocBLAS solutions need contiguous row-major x and w")
        out = torch.empty((x.shape[0], p.M), dtype=p.outdtype, device=x.device)
        lib = self._call.lib
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else None
        _check(lib.rocblas_set_stream(self._call.handle, stream), "rocblas_set_stream")
        args = self._call.args(x.shape[0], w.data_ptr(), x.data_ptr(), out.data_ptr())
        _check(lib.rocblas_gemm_ex(*args, self.index, GEMM_FLAGS_NONE),
               f"rocblas_gemm_ex (solution {self.index})")
        if p.bias:
            if ops.bias is None:
                raise ValueError("the problem has a bias but the operands carry none")
            out += ops.bias
        return out


class RocBlasBackend(RocmLibraryBackend):
    """rocBLAS through ctypes; see the module docstring."""

    libtype = LIBTYPE
    load = staticmethod(load)

    def __init__(self, library: str | None = None, device: str | None = None) -> None:
        super().__init__(library, device)
        self._handles: dict[torch.device, tuple[ctypes.c_void_p, torch.Tensor]] = {}

    def version(self) -> str:
        """e.g. ``rocblas-4.2.0``; RuntimeError if the backend is unavailable."""
        lib, size = self._lib(), ctypes.c_size_t()
        _check(lib.rocblas_get_version_string_size(ctypes.byref(size)),
               "rocblas_get_version_string_size")
        text = ctypes.create_string_buffer(size.value)
        _check(lib.rocblas_get_version_string(text, size.value), "rocblas_get_version_string")
        return f"rocblas-{text.value.decode()}"

    def _call(self, problem: GemmProblem) -> tuple[_Call, torch.device, int]:
        """The call of a problem on this backend's device and a placeholder pointer (a small
        buffer: the checks read no data)."""
        lib, device = self._lib(), self._device()
        if device not in self._handles:
            handle = ctypes.c_void_p()
            _check(lib.rocblas_create_handle(ctypes.byref(handle)), "rocblas_create_handle")
            self._handles[device] = (handle, torch.empty(256, dtype=torch.uint8, device=device))
        handle, buffer = self._handles[device]
        return _Call(lib, handle, problem), device, buffer.data_ptr()

    def solutions(self, problem: GemmProblem, max_candidates: int | None = None) -> list[Solution]:
        """Every listed solution index the check flag confirms, at most ``max_candidates``;
        empty where the backend or the problem is unsupported."""
        if not self.available()[0] or unsupported_reason(problem):
            return []
        call, device, placeholder = self._call(problem)
        found = [RocBlasSolution(problem, call, i, device)
                 for i in call.solutions(problem.N, placeholder)
                 if call.valid(i, problem.N, placeholder)]
        return found[:max_candidates]

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        """Rebuild ``rocblas:index=I``; ValueError naming the spec if it is malformed or the
        check flag refuses the index for the problem."""
        libtype, fields = parse_spec(spec)
        text = fields.get("index", "")
        if libtype != LIBTYPE or set(fields) != {"index"} or not text.lstrip("-").isdigit():
            raise ValueError(f"not a rocblas spec (rocblas:index=I): {spec!r}")
        reason = unsupported_reason(problem)
        if reason:
            raise ValueError(f"{spec}: {reason}")
        call, device, placeholder = self._call(problem)
        if not call.valid(int(text), problem.N, placeholder):
            raise ValueError(f"{spec}: rocBLAS ({self.version()}) refuses solution {text} for "
                             f"{problem} (check_solution_index): the runtime uses default for it")
        return RocBlasSolution(problem, call, int(text), device)
