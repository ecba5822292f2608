"""Gated activations of fused gate/up projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ACTIVATIONS = ("silu",)


class SiluAndMul(nn.Module):
    """``silu(x[:, :d]) * x[:, d:]`` for ``x`` of width ``2d`` (gate then up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
