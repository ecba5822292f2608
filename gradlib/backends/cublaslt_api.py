"""Raw ctypes bindings to libcublasLt: finding and loading the library, the enum values and
structs solidx uses (from cublasLt.h, cublas_api.h and library_types.h), and status checking.

Nothing here launches work: :mod:`solidx.gradlib.backends.cublaslt_plan` makes the calls, and
:mod:`solidx.gradlib.backends.cublaslt` builds the backend on top.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
from functools import cache

import torch

# cudaDataType_t (library_types.h)
CUDA_R_32F = 0
CUDA_R_16F = 2
CUDA_R_16BF = 14
CUDA_R_8F_E4M3 = 28
CUDA_R_8F_E5M2 = 29

CUDA_DTYPES: dict[torch.dtype, int] = {
    torch.float32: CUDA_R_32F,
    torch.float16: CUDA_R_16F,
    torch.bfloat16: CUDA_R_16BF,
    torch.float8_e4m3fn: CUDA_R_8F_E4M3,
    torch.float8_e5m2: CUDA_R_8F_E5M2,
}

# cublasComputeType_t, cublasOperation_t (cublas_api.h)
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N = 0
CUBLAS_OP_T = 1

# cublasLtMatmulDescAttributes_t
MATMUL_DESC_TRANSA = 3  # int32
MATMUL_DESC_TRANSB = 4  # int32
MATMUL_DESC_EPILOGUE = 7  # uint32
MATMUL_DESC_BIAS_POINTER = 8  # void*
MATMUL_DESC_A_SCALE_POINTER = 17  # void*
MATMUL_DESC_B_SCALE_POINTER = 18  # void*
MATMUL_DESC_BIAS_DATA_TYPE = 26  # int32

# cublasLtEpilogue_t
EPILOGUE_DEFAULT = 1
EPILOGUE_BIAS = 4

# cublasLtMatmulPreferenceAttributes_t
PREF_MAX_WORKSPACE_BYTES = 1  # uint64

# cublasLtReductionScheme_t: bits of a mask; NONE is 0
REDUCTION_SCHEMES = (1, 2, 4)  # INPLACE, COMPUTE_TYPE, OUTPUT_TYPE

# cublasLtMatmulAlgoCapAttributes_t
CAP_SPLITK_SUPPORT = 0  # int32
CAP_REDUCTION_SCHEME_MASK = 1  # uint32
CAP_CTA_SWIZZLING_SUPPORT = 2  # uint32
CAP_TILE_IDS = 6  # uint32[]
CAP_CUSTOM_OPTION_MAX = 7  # int32
CAP_EPILOGUE_MASK = 12  # uint32
CAP_STAGES_IDS = 13  # uint32[]

# cublasLtMatmulAlgoConfigAttributes_t and the C type of each value
CONFIG_ID = 0
CONFIG_TILE_ID = 1
CONFIG_SPLITK_NUM = 2
CONFIG_REDUCTION_SCHEME = 3
CONFIG_CTA_SWIZZLING = 4
CONFIG_CUSTOM_OPTION = 5
CONFIG_STAGES_ID = 6
CONFIG_INNER_SHAPE_ID = 7
CONFIG_CLUSTER_SHAPE_ID = 8
CONFIG_CTYPES: dict[int, type] = {
    CONFIG_ID: ctypes.c_int32,
    CONFIG_TILE_ID: ctypes.c_uint32,
    CONFIG_SPLITK_NUM: ctypes.c_int32,
    CONFIG_REDUCTION_SCHEME: ctypes.c_uint32,
    CONFIG_CTA_SWIZZLING: ctypes.c_uint32,
    CONFIG_CUSTOM_OPTION: ctypes.c_uint32,
    CONFIG_STAGES_ID: ctypes.c_uint32,
    CONFIG_INNER_SHAPE_ID: ctypes.c_uint16,
    CONFIG_CLUSTER_SHAPE_ID: ctypes.c_uint16,
}

CUBLAS_STATUS_SUCCESS = 0
CUBLAS_STATUS_INVALID_VALUE = 7
CUBLAS_STATUS_NOT_SUPPORTED = 15
_STATUS_NAMES = {
    0: "CUBLAS_STATUS_SUCCESS",
    1: "CUBLAS_STATUS_NOT_INITIALIZED",
    3: "CUBLAS_STATUS_ALLOC_FAILED",
    7: "CUBLAS_STATUS_INVALID_VALUE",
    8: "CUBLAS_STATUS_ARCH_MISMATCH",
    11: "CUBLAS_STATUS_MAPPING_ERROR",
    13: "CUBLAS_STATUS_EXECUTION_FAILED",
    14: "CUBLAS_STATUS_INTERNAL_ERROR",
    15: "CUBLAS_STATUS_NOT_SUPPORTED",
    16: "CUBLAS_STATUS_LICENSE_ERROR",
}


class MatmulAlgo(ctypes.Structure):
    """``cublasLtMatmulAlgo_t``: 8 opaque uint64."""

    _fields_ = [("data", ctypes.c_uint64 * 8)]


class HeuristicResult(ctypes.Structure):
    """``cublasLtMatmulHeuristicResult_t``."""

    _fields_ = [
        ("algo", MatmulAlgo),
        ("workspaceSize", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("wavesCount", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


_p = ctypes.c_void_p
_i = ctypes.c_int
_sz = ctypes.c_size_t
_pp, _pi, _psz = ctypes.POINTER(_p), ctypes.POINTER(_i), ctypes.POINTER(_sz)
_palgo, _presult = ctypes.POINTER(MatmulAlgo), ctypes.POINTER(HeuristicResult)
_u64, _i64 = ctypes.c_uint64, ctypes.c_int64
_SIGNATURES: dict[str, list] = {
    "cublasLtCreate": [_pp],
    "cublasLtMatmulDescCreate": [_pp, _i, _i],
    "cublasLtMatmulDescDestroy": [_p],
    "cublasLtMatmulDescSetAttribute": [_p, _i, _p, _sz],
    "cublasLtMatrixLayoutCreate": [_pp, _i, _u64, _u64, _i64],
    "cublasLtMatrixLayoutDestroy": [_p],
    "cublasLtMatmulPreferenceCreate": [_pp],
    "cublasLtMatmulPreferenceDestroy": [_p],
    "cublasLtMatmulPreferenceSetAttribute": [_p, _i, _p, _sz],
    "cublasLtMatmulAlgoGetHeuristic": [_p, _p, _p, _p, _p, _p, _p, _i, _presult, _pi],
    "cublasLtMatmulAlgoGetIds": [_p, _i, _i, _i, _i, _i, _i, _i, _pi, _pi],
    "cublasLtMatmulAlgoInit": [_p, _i, _i, _i, _i, _i, _i, _i, _palgo],
    "cublasLtMatmulAlgoCheck": [_p, _p, _p, _p, _p, _p, _palgo, _presult],
    "cublasLtMatmulAlgoCapGetAttribute": [_palgo, _i, _p, _sz, _psz],
    "cublasLtMatmulAlgoConfigSetAttribute": [_palgo, _i, _p, _sz],
    "cublasLtMatmulAlgoConfigGetAttribute": [_palgo, _i, _p, _sz, _psz],
    "cublasLtMatmul": [_p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _palgo, _p, _sz, _p],
}

LIBRARY_GLOB = "libcublasLt.so*"


def library_candidates(
    maps_text: str, nvidia_dirs: list[str], cuda_home: str | None, loader_name: str | None
) -> list[str]:
    """Where to look for libcublasLt, best first: the copy this process already loaded (torch's,
    from ``/proc/self/maps``), NVIDIA's pip wheels (``nvidia/*/lib``), ``CUDA_HOME/lib64``, then
    the loader's search path. Duplicates are dropped."""
    paths = [line.split(maxsplit=5)[-1] for line in maps_text.splitlines()
             if "libcublasLt.so" in line]
    for base in nvidia_dirs:
        paths += sorted(glob.glob(os.path.join(base, "*", "lib", LIBRARY_GLOB)))
    if cuda_home:
        paths += sorted(glob.glob(os.path.join(cuda_home, "lib64", LIBRARY_GLOB)))
    if loader_name:
        paths.append(loader_name)
    return list(dict.fromkeys(p.strip() for p in paths))


def _nvidia_dirs() -> list[str]:
    spec = importlib.util.find_spec("nvidia")
    return list(spec.submodule_search_locations or []) if spec else []


def _maps_text() -> str:
    try:
        with open("/proc/self/maps") as f:
            return f.read()
    except OSError:
        return ""


def _cuda_home() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME  # resolves CUDA_HOME / CUDA_PATH / nvcc

    return CUDA_HOME


@cache
def load() -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of the first libcublasLt that loads, or ``(None, why)``."""
    if torch.cuda.is_available():
        torch.cuda.init()  # torch's CUDA libraries (cuBLASLt among them) are mapped by now
    candidates = library_candidates(
        _maps_text(), _nvidia_dirs(), _cuda_home(), ctypes.util.find_library("cublasLt")
    )
    errors = []
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        lib.cublasLtGetVersion.restype = ctypes.c_size_t
        lib.cublasLtGetVersion.argtypes = []
        return lib, path
    tried = "; ".join(errors) or (
        "none found in torch's libraries, nvidia/*/lib, CUDA_HOME/lib64 or the loader path")
    return None, f"cannot load libcublasLt: {tried}"


def library() -> ctypes.CDLL:
    lib, why = load()
    if lib is None:
        raise RuntimeError(why)
    return lib


def status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, f"cublasStatus {status}")


def check(status: int, what: str) -> None:
    """Raise RuntimeError naming the call and the status unless it succeeded."""
    if status != CUBLAS_STATUS_SUCCESS:
        raise RuntimeError(f"{what} failed: {status_name(status)}")


def call(lib: ctypes.CDLL, name: str, *args: object) -> None:
    """Call ``lib.<name>(*args)`` and :func:`check` its status."""
    check(getattr(lib, name)(*args), name)
