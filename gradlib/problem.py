"""One GEMM problem, in gradlib's convention.

A linear layer computes ``y[tokens, out] = x[tokens, in] @ W[out, in]ᵀ``. The CSV columns and
this dataclass use gradlib's names:

=====  ====================================================
``M``  output features (rows of W, per tensor-parallel shard)
``N``  tokens (rows of x)
``K``  input features (the reduction)
=====  ====================================================

``dtype`` is the operand dtype (x and W), ``outdtype`` the dtype of y. fp8 problems carry
per-tensor scales for x and W (float32 scalars) and compute ``y = (x·sx) @ (W·sw)ᵀ + bias``.
Nothing else in solidx re-derives this mapping.

A problem holds its dtypes as canonical names (``dtype_name``, ``outdtype_name``: the CSV code
imports no torch); ``dtype`` and ``outdtype`` give the torch dtypes (importing torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solidx.gradlib.dtypes import BF16_NAME, FP8_NAME, ITEMSIZES, dtype_name, is_fp8, torch_dtype

if TYPE_CHECKING:
    import torch


def _known_dtype(field: str, dtype: torch.dtype | str) -> str:
    name = dtype_name(dtype)
    if name not in ITEMSIZES:
        raise ValueError(f"{field} must be one of {', '.join(ITEMSIZES)}, got {dtype!r}")
    return name


@dataclass(frozen=True, init=False, repr=False)
class GemmProblem:
    """Immutable and hashable (equal problems have equal fields); ``dtype`` and ``outdtype`` may
    be given as torch dtypes or dtype names (:mod:`solidx.gradlib.dtypes`)."""

    M: int
    N: int
    K: int
    bias: bool
    dtype_name: str
    outdtype_name: str

    def __init__(self, M: int, N: int, K: int, bias: bool = False,
                 dtype: torch.dtype | str = FP8_NAME,
                 outdtype: torch.dtype | str = BF16_NAME) -> None:
        for name, value in (("M", M), ("N", N), ("K", K)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        fields = {"M": M, "N": N, "K": K, "bias": bias,
                  "dtype_name": _known_dtype("dtype", dtype),
                  "outdtype_name": _known_dtype("outdtype", outdtype)}
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def for_linear(
        cls,
        out_features: int,
        tokens: int,
        in_features: int,
        *,
        bias: bool = False,
        dtype: torch.dtype | str = FP8_NAME,
        outdtype: torch.dtype | str = BF16_NAME,
    ) -> GemmProblem:
        """The problem of ``y[tokens, out] = x[tokens, in] @ W[out, in]ᵀ``."""
        return cls(M=out_features, N=tokens, K=in_features, bias=bias, dtype=dtype,
                   outdtype=outdtype)

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype_name)

    @property
    def outdtype(self) -> torch.dtype:
        return torch_dtype(self.outdtype_name)

    @property
    def out_features(self) -> int:
        return self.M

    @property
    def tokens(self) -> int:
        return self.N

    @property
    def in_features(self) -> int:
        return self.K

    @property
    def is_fp8(self) -> bool:
        return is_fp8(self.dtype_name)

    @property
    def itemsize(self) -> int:
        """Bytes of one operand element (of ``dtype``)."""
        return ITEMSIZES[self.dtype_name]

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K

    @property
    def min_bytes(self) -> int:
        """Fewest bytes one call moves: x and W read once, y written once (bias included)."""
        in_size, out_size = self.itemsize, ITEMSIZES[self.outdtype_name]
        moved = (self.M * self.K + self.N * self.K) * in_size + self.M * self.N * out_size
        return moved + (self.M * out_size if self.bias else 0)

    @property
    def weight_bytes(self) -> int:
        return self.M * self.K * self.itemsize

    def with_tokens(self, n: int) -> GemmProblem:
        return GemmProblem(self.M, n, self.K, self.bias, self.dtype_name, self.outdtype_name)

    def key(self) -> tuple[int, int, int, bool, str, str]:
        """Hashable identity used for dedupe and lookup (dtypes as CSV names)."""
        return (self.M, self.N, self.K, self.bias, self.dtype_name, self.outdtype_name)

    def __repr__(self) -> str:
        return (f"GemmProblem(M={self.M}, N={self.N}, K={self.K}, bias={self.bias}, "
                f"dtype={self.dtype_name}, outdtype={self.outdtype_name})")

    def __str__(self) -> str:
        return (
            f"M={self.M} N={self.N} K={self.K} bias={self.bias} "
            f"{self.dtype_name}->{self.outdtype_name}"
        )
