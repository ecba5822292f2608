"""SiLU-and-mul of a fused gate/up projection output in one Triton kernel.

Computes what ``runtime.layers.activation.SiluAndMul.forward_native`` does: ``silu(gate)`` in
float32 rounded to the input dtype, times ``up``, rounded again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(X, OUT, stride_x, stride_o, d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < d
    gate = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + cols, mask=ok, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(X.dtype.element_ty).to(tl.float32)
    tl.store(OUT + row * stride_o + cols, (act * up).to(OUT.dtype.element_ty), mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` of width ``2d`` (gate then up)."""
    if x.shape[-1] % 2:
        raise ValueError(f"SiLU-and-mul needs an even width (gate then up), not {x.shape[-1]}")
    d = x.shape[-1] // 2
    rows = x.reshape(-1, 2 * d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    if rows.shape[0] > 0 and d > 0:
        _silu_mul_kernel[(rows.shape[0], triton.cdiv(d, BLOCK))](
            rows, out, rows.stride(0), d, d, BLOCK=BLOCK, num_warps=4
        )
    return out
