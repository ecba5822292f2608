"""What differs between cuBLASLt and hipBLASLt, the two vendors of one Lt C API: symbol prefix,
enum values, struct layouts, library names and the calls' prototypes.

Sources of every value (checked by ``tests/test_hipblaslt_structure.py``): cuBLASLt from NVIDIA's
``cublasLt.h``, ``cublas_api.h`` and ``library_types.h``; hipBLASLt from AMD's
``ROCm/hipBLASLt`` ``library/include/hipblaslt.h``, ``hipblas-common.h`` (``ROCm/hipBLAS-common``)
and HIP's ``library_types.h`` (``hipDataType``). Pure data: nothing here loads a library.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch


class CublasLtMatmulAlgo(ctypes.Structure):
    """``cublasLtMatmulAlgo_t``: 8 opaque uint64 (64 bytes)."""

    _fields_ = [("data", ctypes.c_uint64 * 8)]


class HipBlasLtMatmulAlgo(ctypes.Structure):
    """``hipblasLtMatmulAlgo_t``: 16 bytes of data and ``max_workspace_bytes`` (24 bytes)."""

    _fields_ = [("data", ctypes.c_uint8 * 16), ("max_workspace_bytes", ctypes.c_size_t)]


def _heuristic_result(algo: type) -> type:
    """``<prefix>MatmulHeuristicResult_t``: the same fields in both headers around the algo."""
    return type(f"{algo.__name__}HeuristicResult", (ctypes.Structure,), {"_fields_": [
        ("algo", algo),
        ("workspaceSize", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("wavesCount", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]})


@dataclass(frozen=True)
class LtVendor:
    """One vendor of the Lt API. ``dtypes`` maps torch dtypes to the library's data types;
    ``desc`` the matmul-descriptor attributes solidx sets; ``status`` the status names."""

    name: str
    prefix: str
    library_glob: str
    loader_name: str
    dtypes: dict[torch.dtype, int]
    r_32f: int
    compute_32f: int
    op_n: int
    op_t: int
    desc: dict[str, int]
    epilogue_default: int
    epilogue_bias: int
    pref_max_workspace_bytes: int
    status: dict[int, str]
    status_not_supported: int
    algo: type
    result: type = field(init=False)
    version_takes_handle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", _heuristic_result(self.algo))

    def status_name(self, status: int) -> str:
        return self.status.get(status, f"{self.prefix} status {status}")

    def signatures(self) -> dict[str, list]:
        """``symbol -> argtypes`` of the calls both vendors share (every one returns a status)."""
        p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        pp, pi = ctypes.POINTER(p), ctypes.POINTER(i)
        palgo, presult = ctypes.POINTER(self.algo), ctypes.POINTER(self.result)
        u64, i64 = ctypes.c_uint64, ctypes.c_int64
        calls: dict[str, list] = {
            "Create": [pp],
            "MatmulDescCreate": [pp, i, i],
            "MatmulDescDestroy": [p],
            "MatmulDescSetAttribute": [p, i, p, sz],
            "MatrixLayoutCreate": [pp, i, u64, u64, i64],
            "MatrixLayoutDestroy": [p],
            "MatmulPreferenceCreate": [pp],
            "MatmulPreferenceDestroy": [p],
            "MatmulPreferenceSetAttribute": [p, i, p, sz],
            "MatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i, presult, pi],
            "Matmul": [p, p, p, p, p, p, p, p, p, p, p, p, palgo, p, sz, p],
        }
        if self.version_takes_handle:
            calls["GetVersion"] = [p, pi]
        return {self.prefix + name: args for name, args in calls.items()}


_DESC_KEYS = ("transa", "transb", "epilogue", "bias_pointer", "bias_data_type",
              "a_scale_pointer", "b_scale_pointer", "c_scale_pointer", "d_scale_pointer")

CUBLASLT = LtVendor(
    name="cublaslt",
    prefix="cublasLt",
    library_glob="libcublasLt.so*",
    loader_name="cublasLt",
    dtypes={torch.float32: 0, torch.float16: 2, torch.bfloat16: 14,
            torch.float8_e4m3fn: 28, torch.float8_e5m2: 29},
    r_32f=0,
    compute_32f=68,  # CUBLAS_COMPUTE_32F
    op_n=0,
    op_t=1,
    # cublasLtMatmulDescAttributes_t (C/D scale pointers are 19 and 20 there)
    desc=dict(zip(_DESC_KEYS, (3, 4, 7, 8, 26, 17, 18, 19, 20))),
    epilogue_default=1,
    epilogue_bias=4,
    pref_max_workspace_bytes=1,
    status={0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
            3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
            8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
            13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
            15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"},
    status_not_supported=15,
    algo=CublasLtMatmulAlgo,
)

HIP_R_8F_E4M3 = 28  # OCP e4m3 (gfx950)
HIP_R_8F_E5M2 = 29
HIP_R_8F_E4M3_FNUZ = 1000  # MI300-class (gfx94x)
HIP_R_8F_E5M2_FNUZ = 1001

HIPBLASLT = LtVendor(
    name="hipblaslt",
    prefix="hipblasLt",
    library_glob="libhipblaslt.so*",
    loader_name="hipblaslt",
    dtypes={torch.float32: 0, torch.float16: 2, torch.bfloat16: 14,
            torch.float8_e4m3fn: HIP_R_8F_E4M3, torch.float8_e5m2: HIP_R_8F_E5M2,
            torch.float8_e4m3fnuz: HIP_R_8F_E4M3_FNUZ, torch.float8_e5m2fnuz: HIP_R_8F_E5M2_FNUZ},
    r_32f=0,
    compute_32f=2,  # HIPBLAS_COMPUTE_32F (hipblas-common.h)
    op_n=111,
    op_t=112,
    desc=dict(zip(_DESC_KEYS, (0, 1, 2, 3, 4, 5, 6, 7, 8))),
    epilogue_default=1,
    epilogue_bias=4,
    pref_max_workspace_bytes=1,
    status={0: "HIPBLAS_STATUS_SUCCESS", 1: "HIPBLAS_STATUS_NOT_INITIALIZED",
            2: "HIPBLAS_STATUS_ALLOC_FAILED", 3: "HIPBLAS_STATUS_INVALID_VALUE",
            4: "HIPBLAS_STATUS_MAPPING_ERROR", 5: "HIPBLAS_STATUS_EXECUTION_FAILED",
            6: "HIPBLAS_STATUS_INTERNAL_ERROR", 7: "HIPBLAS_STATUS_NOT_SUPPORTED",
            8: "HIPBLAS_STATUS_ARCH_MISMATCH", 9: "HIPBLAS_STATUS_HANDLE_IS_NULLPTR",
            10: "HIPBLAS_STATUS_INVALID_ENUM", 11: "HIPBLAS_STATUS_UNKNOWN"},
    status_not_supported=7,
    algo=HipBlasLtMatmulAlgo,
    version_takes_handle=True,
)

STATUS_SUCCESS = 0  # both vendors
