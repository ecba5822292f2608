"""Gated activations of fused gate/up projections (one Triton kernel on CUDA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from solidx.runtime.layers.fused import use_triton
from solidx.runtime.layers.fused.silu_mul import silu_and_mul

SUPPORTED_ACTIVATIONS = ("silu",)


class SiluAndMul(nn.Module):
    """``silu(x[:, :d]) * x[:, d:]`` for ``x`` of width ``2d`` (gate then up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x) if use_triton(x) else self.forward_native(x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """The torch code: the reference of the fused kernel."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
