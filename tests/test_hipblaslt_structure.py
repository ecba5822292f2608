"""Structural checks of the ROCm bindings against AMD's published headers: every prototype the
bindings declare, every struct size and enum value, each with the header it comes from.

Sources (read from the public repositories):

* H = ``ROCm/hipBLASLt`` ``library/include/hipblaslt.h``: ``hipblasLtMatmulAlgo_t``
  (``uint8_t data[16]; size_t max_workspace_bytes``), ``hipblasLtMatmulHeuristicResult_t``
  (algo, ``size_t workspaceSize``, ``hipblasStatus_t state``, ``float wavesCount``,
  ``int reserved[4]``), ``hipblasLtEpilogue_t``, ``hipblasLtMatmulDescAttributes_t``,
  ``hipblasLtMatmulPreferenceAttributes_t`` and the ``HIPBLASLT_EXPORT`` prototypes.
* C = ``ROCm/hipBLAS-common`` ``library/include/hipblas-common.h``: ``hipblasStatus_t``,
  ``hipblasOperation_t``, ``hipblasComputeType_t``.
* T = HIP's ``library_types.h`` (``hipDataType``): R_32F 0, R_16F 2, R_16BF 14, R_8F_E4M3 28,
  R_8F_E5M2 29, R_8F_E4M3_FNUZ 1000, R_8F_E5M2_FNUZ 1001.
* R = ``ROCm/rocBLAS`` ``library/include/internal/rocblas-types.h`` (operations, data types,
  status, ``rocblas_gemm_algo``, ``rocblas_gemm_flags``) and ``rocblas-beta.h`` /
  ``rocblas-functions.h`` (``rocblas_gemm_ex_get_solutions``, ``rocblas_gemm_ex``).
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from solidx.gradlib.backends import cublaslt_api, rocblas
from solidx.gradlib.backends.lt_vendor import CUBLASLT, HIPBLASLT, HipBlasLtMatmulAlgo

P, I, SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
PP, PI = ctypes.POINTER(P), ctypes.POINTER(I)


def test_hipblaslt_struct_layouts():  # H
    assert ctypes.sizeof(HipBlasLtMatmulAlgo) == 24
    assert HipBlasLtMatmulAlgo.data.offset == 0 and HipBlasLtMatmulAlgo.data.size == 16
    assert HipBlasLtMatmulAlgo.max_workspace_bytes.offset == 16
    result = HIPBLASLT.result
    assert ctypes.sizeof(result) == 56  # LP64
    offsets = {name: getattr(result, name).offset for name, _ in result._fields_}
    assert offsets == {"algo": 0, "workspaceSize": 24, "state": 32, "wavesCount": 36,
                       "reserved": 40}


def test_cublaslt_struct_layouts_are_unchanged():  # cublasLt.h
    assert ctypes.sizeof(CUBLASLT.algo) == 64
    assert ctypes.sizeof(CUBLASLT.result) == 96
    assert cublaslt_api.MatmulAlgo is CUBLASLT.algo


def test_hipblaslt_enum_values():
    # H: hipblasLtMatmulDescAttributes_t
    assert HIPBLASLT.desc == {
        "transa": 0, "transb": 1, "epilogue": 2, "bias_pointer": 3, "bias_data_type": 4,
        "a_scale_pointer": 5, "b_scale_pointer": 6, "c_scale_pointer": 7, "d_scale_pointer": 8}
    # H: hipblasLtEpilogue_t, hipblasLtMatmulPreferenceAttributes_t
    assert (HIPBLASLT.epilogue_default, HIPBLASLT.epilogue_bias) == (1, 4)
    assert HIPBLASLT.pref_max_workspace_bytes == 1
    # C: hipblasOperation_t, hipblasComputeType_t, hipblasStatus_t
    assert (HIPBLASLT.op_n, HIPBLASLT.op_t, HIPBLASLT.compute_32f) == (111, 112, 2)
    assert HIPBLASLT.status_not_supported == 7
    assert HIPBLASLT.status[3] == "HIPBLAS_STATUS_INVALID_VALUE"
    assert HIPBLASLT.status[5] == "HIPBLAS_STATUS_EXECUTION_FAILED"
    # T: hipDataType
    assert HIPBLASLT.dtypes == {
        torch.float32: 0, torch.float16: 2, torch.bfloat16: 14, torch.float8_e4m3fn: 28,
        torch.float8_e5m2: 29, torch.float8_e4m3fnuz: 1000, torch.float8_e5m2fnuz: 1001}
    assert HIPBLASLT.r_32f == 0


def test_cublaslt_enum_values_are_unchanged():  # cublasLt.h, cublas_api.h, library_types.h
    assert CUBLASLT.desc["transa"] == 3 and CUBLASLT.desc["transb"] == 4
    assert CUBLASLT.desc["epilogue"] == 7 and CUBLASLT.desc["bias_pointer"] == 8
    assert CUBLASLT.desc["a_scale_pointer"] == 17 and CUBLASLT.desc["b_scale_pointer"] == 18
    assert (CUBLASLT.op_n, CUBLASLT.op_t, CUBLASLT.compute_32f) == (0, 1, 68)
    assert CUBLASLT.dtypes[torch.float8_e4m3fn] == 28 and CUBLASLT.status_not_supported == 15


# H: the prototypes, parameter by parameter (handles, descriptors and pointers are void*)
HIPBLASLT_PROTOTYPES = {
    "hipblasLtCreate": [PP],  # (hipblasLtHandle_t* handle)
    "hipblasLtGetVersion": [P, PI],  # (hipblasLtHandle_t, int* version)
    "hipblasLtMatmulDescCreate": [PP, I, I],  # (desc*, hipblasComputeType_t, hipDataType)
    "hipblasLtMatmulDescDestroy": [P],
    "hipblasLtMatmulDescSetAttribute": [P, I, P, SZ],  # (desc, attr, const void*, size_t)
    # (layout*, hipDataType, uint64_t rows, uint64_t cols, int64_t ld)
    "hipblasLtMatrixLayoutCreate": [PP, I, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
    "hipblasLtMatrixLayoutDestroy": [P],
    "hipblasLtMatmulPreferenceCreate": [PP],
    "hipblasLtMatmulPreferenceDestroy": [P],
    "hipblasLtMatmulPreferenceSetAttribute": [P, I, P, SZ],
    # (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, pref, int requested, result[], int* returned)
    "hipblasLtMatmulAlgoGetHeuristic": [P, P, P, P, P, P, P, I,
                                        ctypes.POINTER(HIPBLASLT.result), PI],
    # (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo*, workspace,
    #  size_t workspaceSizeInBytes, hipStream_t)
    "hipblasLtMatmul": [P, P, P, P, P, P, P, P, P, P, P, P, ctypes.POINTER(HipBlasLtMatmulAlgo),
                        P, SZ, P],
}


def test_hipblaslt_prototypes():
    assert HIPBLASLT.signatures() == HIPBLASLT_PROTOTYPES


def test_cublaslt_binds_the_same_shared_calls():
    shared = {name.replace("hipblasLt", "cublasLt") for name in HIPBLASLT_PROTOTYPES}
    assert set(CUBLASLT.signatures()) == shared - {"cublasLtGetVersion"}
    assert set(CUBLASLT.signatures()) <= set(cublaslt_api.SIGNATURES)


def test_rocblas_enum_values():  # R
    assert (rocblas.OPERATION_NONE, rocblas.OPERATION_TRANSPOSE) == (111, 112)
    assert rocblas.DATATYPES == {torch.float16: 150, torch.float32: 151, torch.bfloat16: 168}
    assert rocblas.GEMM_ALGO_SOLUTION_INDEX == 1
    assert (rocblas.GEMM_FLAGS_NONE, rocblas.GEMM_FLAGS_CHECK_SOLUTION_INDEX) == (0, 0x8)
    assert rocblas.STATUS[11] == "rocblas_status_invalid_value"
    assert rocblas.STATUS[6] == "rocblas_status_internal_error"


I32, U32 = ctypes.c_int32, ctypes.c_uint32
# R: (handle, transA, transB, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c, c_type,
#     ldc, d, d_type, ldd, compute_type, algo, ...)
GEMM_EX_COMMON = [P, I32, I32, I32, I32, I32, P, P, I32, I32, P, I32, I32, P, P, I32, I32, P, I32,
                  I32, I32, I32]


@pytest.mark.parametrize("name, tail", [
    ("rocblas_gemm_ex", [I32, U32]),  # int32_t solution_index, uint32_t flags
    # uint32_t flags, rocblas_int* list_array, rocblas_int* list_size
    ("rocblas_gemm_ex_get_solutions", [U32, ctypes.POINTER(I32), ctypes.POINTER(I32)]),
])
def test_rocblas_gemm_prototypes(name, tail):
    assert rocblas.SIGNATURES[name] == GEMM_EX_COMMON + tail
    assert len(rocblas.SIGNATURES[name]) == {"rocblas_gemm_ex": 24,
                                             "rocblas_gemm_ex_get_solutions": 25}[name]


def test_rocblas_handle_and_version_prototypes():  # R: rocblas-auxiliary.h
    assert rocblas.SIGNATURES["rocblas_create_handle"] == [PP]
    assert rocblas.SIGNATURES["rocblas_set_stream"] == [P, P]
    assert rocblas.SIGNATURES["rocblas_get_version_string_size"] == [ctypes.POINTER(SZ)]
    assert rocblas.SIGNATURES["rocblas_get_version_string"] == [ctypes.c_char_p, SZ]
