"""RMSNorm, optionally fused with the residual add before it (one Triton kernel on CUDA), and
optionally handing its output quantized to the fp8 linear layer it feeds. After a row-parallel
layer it also sums the ranks' partial outputs, in the same kernel with
``SOLIDX_FUSED_ALL_REDUCE=1`` where the custom all-reduce's buffers hold them
(:mod:`runtime.layers.fused.all_reduce_rms_norm`)."""

from __future__ import annotations

import torch
from torch import nn

from solidx.runtime.distributed import get_tp_size, tp_all_reduce, tp_fused_all_reduce
from solidx.runtime.layers.fused import use_fusion, use_triton
from solidx.runtime.layers.fused.all_reduce_rms_norm import all_reduce_rms_norm
from solidx.runtime.layers.fused.rms_norm import rms_norm
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput

NormOutput = torch.Tensor | QuantizedInput


class RMSNorm(nn.Module):
    def __init__(
        self, hidden_size: int, eps: float = 1e-6, params_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(
            torch.empty(hidden_size, dtype=params_dtype), requires_grad=False
        )

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None,
        quant: InputQuant | None = None, all_reduce: bool = False,
    ) -> NormOutput | tuple[NormOutput, torch.Tensor]:
        """``norm(x)``; with ``residual``: ``(norm(x + residual), x + residual)``. With ``quant``
        (the :class:`InputQuant` of the fp8 linear layer it feeds) ``norm`` comes as that layer's
        :class:`QuantizedInput` of the rows ``x [tokens, hidden]``; on CUDA the norm kernel
        quantizes (no launch of its own). With ``all_reduce``, ``x`` is this rank's partial sum
        of a row-parallel layer's output and the sum over the tensor-parallel ranks stands for
        it (a collective: every rank calls it)."""
        if all_reduce and get_tp_size() > 1:
            peers = tp_fused_all_reduce(x) if residual is not None and use_fusion(x) else None
            if peers is not None:
                return all_reduce_rms_norm(x, residual, self.weight, self.eps, peers, quant)
            x = tp_all_reduce(x)
        if use_triton(x):
            return rms_norm(x, self.weight, self.eps, residual, quant, separate=not use_fusion(x))
        return self.forward_native(x, residual, quant)

    def forward_native(
        self, x: torch.Tensor, residual: torch.Tensor | None = None,
        quant: InputQuant | None = None,
    ) -> NormOutput | tuple[NormOutput, torch.Tensor]:
        """The torch code: the reference of the fused kernel."""
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        out = self.weight * normed.to(dtype)
        if quant is not None:
            out = quant.quantize(out)
        return out if residual is None else (out, residual)
