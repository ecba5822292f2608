"""GemmProblem holds dtype names (torch-free) and gives torch dtypes: both spellings build equal
problems, sizes match torch's, and problems stay immutable, hashable and picklable."""
from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from solidx.gradlib import dtypes
from solidx.gradlib.dtypes import FP8, ITEMSIZES, dtype_name, is_fp8, parse_dtype, torch_dtype
from solidx.gradlib.problem import GemmProblem


@pytest.mark.parametrize("name", list(ITEMSIZES))
def test_names_map_to_torch_dtypes_and_sizes(name: str) -> None:
    dtype = torch_dtype(name)
    assert str(dtype) == name == dtype_name(dtype) == dtype_name(name.removeprefix("torch."))
    assert ITEMSIZES[name] == torch.empty((), dtype=dtype).element_size()
    assert is_fp8(name) == is_fp8(dtype) == (dtype.itemsize == 1)


def test_aliases_and_constants() -> None:
    assert FP8 is torch.float8_e4m3fn and dtypes.FP8 is torch.float8_e4m3fn
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(" FP16 ") is torch.float16
    assert dtype_name("e4m3") == "torch.float8_e4m3fn" and dtype_name(torch.float64) == (
        "torch.float64")
    with pytest.raises(ValueError, match="unknown dtype 'fp4'"):
        dtype_name("fp4")
    with pytest.raises(AttributeError):
        getattr(dtypes, "FP4")


def test_names_and_torch_dtypes_build_the_same_problem() -> None:
    by_name = GemmProblem(4096, 16, 1024, True, "fp8", "bf16")
    by_dtype = GemmProblem(4096, 16, 1024, True, torch.float8_e4m3fn, torch.bfloat16)
    assert by_name == by_dtype and hash(by_name) == hash(by_dtype)
    assert by_name.dtype is torch.float8_e4m3fn and by_name.outdtype is torch.bfloat16
    assert (by_name.dtype_name, by_name.outdtype_name) == ("torch.float8_e4m3fn",
                                                           "torch.bfloat16")
    assert by_name.key() == (4096, 16, 1024, True, "torch.float8_e4m3fn", "torch.bfloat16")
    assert GemmProblem(1, 1, 1) == GemmProblem(1, 1, 1, dtype=FP8, outdtype=torch.bfloat16)
    assert GemmProblem(1, 1, 1) != GemmProblem(1, 1, 1, dtype=torch.float16)
    assert str(by_name) == "M=4096 N=16 K=1024 bias=True torch.float8_e4m3fn->torch.bfloat16"
    assert repr(by_name) == ("GemmProblem(M=4096, N=16, K=1024, bias=True, "
                             "dtype=torch.float8_e4m3fn, outdtype=torch.bfloat16)")


def test_sizes_and_derived_problems() -> None:
    problem = GemmProblem(64, 8, 32, True, torch.bfloat16, torch.float32)
    assert problem.min_bytes == (64 * 32 + 8 * 32) * 2 + 64 * 8 * 4 + 64 * 4
    assert problem.weight_bytes == 64 * 32 * 2 and problem.itemsize == 2
    assert problem.flops == 2 * 64 * 8 * 32 and not problem.is_fp8
    wider = problem.with_tokens(128)
    assert (wider.N, wider.dtype, wider.outdtype, wider.bias) == (128, torch.bfloat16,
                                                                   torch.float32, True)


def test_immutable_picklable_and_checked() -> None:
    problem = GemmProblem(64, 8, 32, dtype=torch.float8_e4m3fnuz)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.N = 4  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(problem))
    assert copy == problem and copy.dtype is torch.float8_e4m3fnuz
    with pytest.raises(ValueError, match="N must be a positive integer, got 0"):
        GemmProblem(64, 0, 32)
    with pytest.raises(ValueError, match="dtype must be one of .*got torch.float64"):
        GemmProblem(64, 8, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        GemmProblem(64, 8, 32, outdtype="int4")
