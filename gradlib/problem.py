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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from solidx.gradlib.dtypes import FP8, dtype_name, is_fp8


@dataclass(frozen=True, order=False)
class GemmProblem:
    M: int
    N: int
    K: int
    bias: bool = False
    dtype: torch.dtype = FP8
    outdtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        for name in ("M", "N", "K"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_linear(
        cls,
        out_features: int,
        tokens: int,
        in_features: int,
        *,
        bias: bool = False,
        dtype: torch.dtype = FP8,
        outdtype: torch.dtype = torch.bfloat16,
    ) -> GemmProblem:
        """The problem of ``y[tokens, out] = x[tokens, in] @ W[out, in]ᵀ``."""
        return cls(M=out_features, N=tokens, K=in_features, bias=bias, dtype=dtype,
                   outdtype=outdtype)

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
        return is_fp8(self.dtype)

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K

    @property
    def min_bytes(self) -> int:
        """Fewest bytes one call moves: x and W read once, y written once (bias included)."""
        in_size = torch.empty((), dtype=self.dtype).element_size()
        out_size = torch.empty((), dtype=self.outdtype).element_size()
        moved = (self.M * self.K + self.N * self.K) * in_size + self.M * self.N * out_size
        return moved + (self.M * out_size if self.bias else 0)

    @property
    def weight_bytes(self) -> int:
        return self.M * self.K * torch.empty((), dtype=self.dtype).element_size()

    def with_tokens(self, n: int) -> GemmProblem:
        return GemmProblem(self.M, n, self.K, self.bias, self.dtype, self.outdtype)

    def key(self) -> tuple[int, int, int, bool, str, str]:
        """Hashable identity used for dedupe and lookup (dtypes as CSV names)."""
        return (self.M, self.N, self.K, self.bias, dtype_name(self.dtype),
                dtype_name(self.outdtype))

    def __str__(self) -> str:
        return (
            f"M={self.M} N={self.N} K={self.K} bias={self.bias} "
            f"{dtype_name(self.dtype)}->{dtype_name(self.outdtype)}"
        )
