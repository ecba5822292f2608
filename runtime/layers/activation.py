"""Gated activations of fused gate/up projections (one Triton kernel on CUDA), optionally handing
their output quantized to the fp8 linear layer they feed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from solidx.runtime.layers.fused import use_fusion, use_triton
from solidx.runtime.layers.fused.silu_mul import silu_and_mul
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput

SUPPORTED_ACTIVATIONS = ("silu",)


class SiluAndMul(nn.Module):
    """``silu(x[:, :d]) * x[:, d:]`` for ``x`` of width ``2d`` (gate then up). With ``quant``
    (the :class:`InputQuant` of the fp8 linear layer it feeds) the output comes as that layer's
    :class:`QuantizedInput`; on CUDA the kernel quantizes (no launch of its own)."""

    def forward(
        self, x: torch.Tensor, quant: InputQuant | None = None
    ) -> torch.Tensor | QuantizedInput:
        if use_triton(x):
            return silu_and_mul(x, quant, separate=not use_fusion(x))
        return self.forward_native(x, quant)

    def forward_native(
        self, x: torch.Tensor, quant: InputQuant | None = None
    ) -> torch.Tensor | QuantizedInput:
        """The torch code: the reference of the fused kernel."""
        gate, up = x.chunk(2, dim=-1)
        out = F.silu(gate) * up
        return out if quant is None else quant.quantize(out)
