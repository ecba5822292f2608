"""RMSNorm, optionally after a residual add, in one Triton kernel (one program per row).

Computes what ``runtime.layers.layernorm.RMSNorm.forward_native`` does, rounding where it rounds:
the sum ``x + residual`` and the normalised row are rounded to the input dtype, the mean square
and the scale are float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(X, RESIDUAL, WEIGHT, OUT, RESIDUAL_OUT, stride_x, stride_r, n_cols, eps,
                     BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Row ``program_id`` of ``X`` (and ``RESIDUAL``); ``OUT``/``RESIDUAL_OUT`` are contiguous."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(RESIDUAL + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
        x = (x + r).to(X.dtype.element_ty)
        tl.store(RESIDUAL_OUT + row * n_cols + cols, x, mask=ok)
        x = x.to(tl.float32)
    scale = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * scale).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(WEIGHT + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + row * n_cols + cols, (w * normed).to(OUT.dtype.element_ty), mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``weight * norm(x)`` over the last dimension; with ``residual`` (same shape and dtype as
    ``x``): ``(weight * norm(x + residual), x + residual)``. Inputs are left unchanged."""
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"RMSNorm weight of shape {tuple(weight.shape)} for rows of {hidden}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual {tuple(residual.shape)} {residual.dtype} does not match "
            f"x {tuple(x.shape)} {x.dtype}"
        )
    rows = _rows(x)
    res_rows = rows if residual is None else _rows(residual)
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res_out = out if residual is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0] > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, res_rows, weight.contiguous(), out, res_out,
            rows.stride(0), res_rows.stride(0), hidden, eps,
            BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=min(max(block // 512, 1), 16),
        )
    return out if residual is None else (out, res_out)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 2-d tensor of rows with unit column stride (a view where possible)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()
