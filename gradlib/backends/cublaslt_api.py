"""cuBLASLt's side of the Lt binding: finding and loading libcublasLt, and the enums and
prototypes of the algorithm enumeration only cuBLASLt has (``AlgoGetIds``, ``AlgoInit``,
``AlgoCheck``, capability and configuration attributes; from cublasLt.h). What both Lt vendors
share lives in :mod:`~solidx.gradlib.backends.lt_vendor` (values) and
:mod:`~solidx.gradlib.backends.lt_plan` (calls).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from functools import cache

import torch

from solidx.gradlib.backends import lt_api
from solidx.gradlib.backends.lt_vendor import CUBLASLT

CUDA_DTYPES: dict[torch.dtype, int] = CUBLASLT.dtypes
CUBLAS_COMPUTE_32F = CUBLASLT.compute_32f
CUDA_R_32F = CUBLASLT.r_32f
EPILOGUE_DEFAULT = CUBLASLT.epilogue_default
EPILOGUE_BIAS = CUBLASLT.epilogue_bias
MatmulAlgo = CUBLASLT.algo
HeuristicResult = CUBLASLT.result

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
CUBLAS_STATUS_NOT_SUPPORTED = CUBLASLT.status_not_supported

_p, _i, _sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_pi, _psz = ctypes.POINTER(_i), ctypes.POINTER(_sz)
_palgo, _presult = ctypes.POINTER(MatmulAlgo), ctypes.POINTER(HeuristicResult)
_ONLY_CUBLASLT: dict[str, list] = {  # the algorithm enumeration hipBLASLt's C API lacks
    "cublasLtMatmulAlgoGetIds": [_p, _i, _i, _i, _i, _i, _i, _i, _pi, _pi],
    "cublasLtMatmulAlgoInit": [_p, _i, _i, _i, _i, _i, _i, _i, _palgo],
    "cublasLtMatmulAlgoCheck": [_p, _p, _p, _p, _p, _p, _palgo, _presult],
    "cublasLtMatmulAlgoCapGetAttribute": [_palgo, _i, _p, _sz, _psz],
    "cublasLtMatmulAlgoConfigSetAttribute": [_palgo, _i, _p, _sz],
    "cublasLtMatmulAlgoConfigGetAttribute": [_palgo, _i, _p, _sz, _psz],
}
SIGNATURES = {**CUBLASLT.signatures(), **_ONLY_CUBLASLT}

LIBRARY_GLOB = CUBLASLT.library_glob


def library_candidates(
    maps_text: str, nvidia_dirs: list[str], cuda_home: str | None, loader_name: str | None
) -> list[str]:
    """Where to look for libcublasLt, best first: the copy this process already loaded (torch's,
    from ``/proc/self/maps``), NVIDIA's pip wheels (``nvidia/*/lib``), ``CUDA_HOME/lib64``, then
    the loader's search path. Duplicates are dropped."""
    paths = lt_api.mapped_paths(maps_text, "libcublasLt.so")
    paths += lt_api.globbed([f"{base}/*/lib" for base in nvidia_dirs], LIBRARY_GLOB)
    paths += lt_api.globbed([f"{cuda_home}/lib64"] if cuda_home else [], LIBRARY_GLOB)
    paths += [loader_name] if loader_name else []
    return list(dict.fromkeys(paths))


def _nvidia_dirs() -> list[str]:
    spec = importlib.util.find_spec("nvidia")
    return list(spec.submodule_search_locations or []) if spec else []


def _cuda_home() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME  # resolves CUDA_HOME / CUDA_PATH / nvcc

    return CUDA_HOME


@cache
def load() -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of the first libcublasLt that loads, or ``(None, why)``."""
    if torch.cuda.is_available():
        torch.cuda.init()  # torch's CUDA libraries (cuBLASLt among them) are mapped by now
    candidates = library_candidates(
        lt_api.maps_text(), _nvidia_dirs(), _cuda_home(), ctypes.util.find_library("cublasLt"))
    return lt_api.load_first(candidates, SIGNATURES, "libcublasLt (searched torch's libraries, "
                             "nvidia/*/lib, CUDA_HOME/lib64 and the loader path)")


def library() -> ctypes.CDLL:
    lib, why = load()
    if lib is None:
        raise RuntimeError(why)
    return lib


def status_name(status: int) -> str:
    return CUBLASLT.status_name(status)


def check(status: int, what: str) -> None:
    """Raise RuntimeError naming the call and the status unless it succeeded."""
    lt_api.check(CUBLASLT, status, what)


def call(lib: ctypes.CDLL, name: str, *args: object) -> None:
    """Call ``lib.<name>(*args)`` and :func:`check` its status."""
    check(getattr(lib, name)(*args), name)
