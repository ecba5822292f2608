"""RMSNorm, optionally after a residual add, in one Triton kernel (one program per row), and
optionally quantizing its output for the fp8 linear layer it feeds.

Computes what ``runtime.layers.layernorm.RMSNorm.forward_native`` does, rounding where it rounds:
the sum ``x + residual`` and the normalised row are rounded to the input dtype, the mean square
and the scale are float32; the output is rounded to its dtype before it is quantized, so ``q`` is
bit for bit what ``quantize_input`` makes of the unquantized output. The sum of squares runs in
float64 (exact products): its float32 value does not depend on the summation order, which the
compiler picks per kernel variant (on an H200, float32 sums gave one row in a few hundred
another last bit in the quantizing variant than in the plain one).

With a static input scale every row quantizes in its own program. With a dynamic one the scale
needs the whole output: up to ``ONE_PROGRAM_MAX`` elements (decode batches) one program normalises
every row and then quantizes them; up to ``PARTIALS_MAX`` rows the row programs write their
maxima and one more launch quantizes; beyond, the output is quantized by ``quantize_input``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.quantization.input_quant import (
    MIN_SCALE,
    ONE_PROGRAM_MAX,
    PARTIALS_MAX,
    InputQuant,
    QuantizedInput,
    quantize_one_row,
    quantize_rows_with_max,
    quantize_values,
    quantize_with_partials,
)

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# What a row program stores: its output; the output quantized; the output and its max |out|.
PLAIN = tl.constexpr(0)
STATIC = tl.constexpr(1)
PARTIAL = tl.constexpr(2)


@triton.jit
def _norm_row(X, RESIDUAL, WEIGHT, RESIDUAL_OUT, row, stride_x, stride_r, n_cols, eps,
              BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Row ``row``'s output rounded to ``OUT_DTYPE``, returned as float32 (masked columns 0);
    with ``HAS_RESIDUAL`` it stores ``x + residual`` to the contiguous ``RESIDUAL_OUT``."""
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    return add_and_normalize(x, RESIDUAL, WEIGHT, RESIDUAL_OUT, row, stride_r, n_cols, eps, cols,
                             ok, HAS_RESIDUAL, X.dtype.element_ty, OUT_DTYPE)


@triton.jit
def add_and_normalize(x, RESIDUAL, WEIGHT, RESIDUAL_OUT, row, stride_r, n_cols, eps, cols, ok,
                      HAS_RESIDUAL: tl.constexpr, X_DTYPE: tl.constexpr,
                      OUT_DTYPE: tl.constexpr):
    """:func:`_norm_row` from the row ``x`` (float32 holding ``X_DTYPE`` values, masked columns
    0) on: the residual added (stored to ``RESIDUAL_OUT``), the row normalised and weighted."""
    if HAS_RESIDUAL:
        r = tl.load(RESIDUAL + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
        x = (x + r).to(X_DTYPE)
        tl.store(RESIDUAL_OUT + row * n_cols + cols, x, mask=ok)
        x = x.to(tl.float32)
    x64 = x.to(tl.float64)  # exact squares, a sum whose float32 rounding ignores the order
    scale = tl.rsqrt(tl.sum(x64 * x64, axis=0).to(tl.float32) / n_cols + eps)
    normed = (x * scale).to(X_DTYPE).to(tl.float32)
    w = tl.load(WEIGHT + cols, mask=ok, other=0.0).to(tl.float32)
    return (w * normed).to(OUT_DTYPE).to(tl.float32)


@triton.jit
def _rms_norm_kernel(X, RESIDUAL, WEIGHT, OUT, RESIDUAL_OUT, SCALE, stride_x, stride_r, n_cols,
                     eps, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     OUT_DTYPE: tl.constexpr, MODE: tl.constexpr, FP8_MAX: tl.constexpr,
                     PDL: tl.constexpr):
    """Row ``program_id``; ``OUT``/``RESIDUAL_OUT`` are contiguous. ``MODE`` PLAIN stores the
    output to ``OUT``; STATIC stores it quantized with the scale at ``SCALE`` to ``OUT`` (fp8);
    PARTIAL stores the output and its row's max magnitude to ``SCALE[row]``."""
    dependent_launch.enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    out = _norm_row(X, RESIDUAL, WEIGHT, RESIDUAL_OUT, row, stride_x, stride_r, n_cols, eps,
                    BLOCK, HAS_RESIDUAL, OUT_DTYPE)
    if MODE == STATIC:
        out = quantize_values(out, tl.load(SCALE).to(tl.float32), FP8_MAX)
    tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=ok)
    if MODE == PARTIAL:
        tl.store(SCALE + row, tl.max(tl.abs(out), axis=0))


@triton.jit
def _rms_norm_quant_one_program(X, RESIDUAL, WEIGHT, OUT, RESIDUAL_OUT, Q, SCALE, n_rows,
                                stride_x, stride_r, n_cols, eps, BLOCK: tl.constexpr,
                                HAS_RESIDUAL: tl.constexpr, FP8_MAX: tl.constexpr,
                                MIN_SCALE: tl.constexpr, ONE_ROW: tl.constexpr, PDL: tl.constexpr):
    """Every row in one program: normalise them into ``OUT`` (scratch) keeping the max, store
    the dynamic scale, then quantize ``OUT`` into ``Q``; ``ONE_ROW`` (batch 1): the row is
    quantized from registers, ``OUT`` untouched."""
    dependent_launch.enter(PDL)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    if ONE_ROW:
        out = _norm_row(X, RESIDUAL, WEIGHT, RESIDUAL_OUT, 0, stride_x, stride_r, n_cols, eps,
                        BLOCK, HAS_RESIDUAL, OUT.dtype.element_ty)
        quantize_one_row(out, Q, SCALE, cols, ok, FP8_MAX, MIN_SCALE)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)  # per column, over the rows
        for row in range(n_rows):
            out = _norm_row(X, RESIDUAL, WEIGHT, RESIDUAL_OUT, row, stride_x, stride_r, n_cols,
                            eps, BLOCK, HAS_RESIDUAL, OUT.dtype.element_ty)
            tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=ok)
            amax = tl.maximum(amax, tl.abs(out))
        quantize_rows_with_max(OUT, Q, SCALE, amax, n_rows, n_cols, cols, ok, FP8_MAX,
                               MIN_SCALE)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    quant: InputQuant | None = None, separate: bool = False,
) -> torch.Tensor | QuantizedInput | tuple[torch.Tensor | QuantizedInput, torch.Tensor]:
    """``weight * norm(x)`` over the last dimension; with ``residual`` (same shape and dtype as
    ``x``): ``(weight * norm(x + residual), x + residual)``. With ``quant`` the output comes as
    a :class:`QuantizedInput` of its rows (for the fp8 linear layer it feeds), quantized in the
    norm's launch unless ``separate`` (then by ``quantize_input``). Inputs are left unchanged."""
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"RMSNorm weight of shape {tuple(weight.shape)} for rows of {hidden}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual {tuple(residual.shape)} {residual.dtype} does not match "
            f"x {tuple(x.shape)} {x.dtype}"
        )
    rows = rows_of(x)
    res_rows = rows if residual is None else rows_of(residual)
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    res_out = None if residual is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    launch = _Launch(rows, res_rows, weight.contiguous(), res_out, eps)
    if quant is None:
        out = launch.norm(torch.empty(x.shape, dtype=out_dtype, device=x.device))
    else:
        out = _quantized(launch, out_dtype, quant, separate)
    return out if residual is None else (out, res_out)


def _quantized(launch: _Launch, out_dtype: torch.dtype, quant: InputQuant,
               separate: bool) -> QuantizedInput:
    """The normalised rows of ``launch`` quantized as ``quant`` says, in as few launches as the
    scale allows (see the module docstring), or (``separate``) by ``quantize_input``."""
    rows = launch.rows
    device = rows.device
    if separate:
        return quant.quantize(launch.norm(torch.empty(rows.shape, dtype=out_dtype, device=device)))
    q = torch.empty(rows.shape, dtype=quant.dtype, device=device)
    if quant.scale is not None:
        return QuantizedInput(launch.norm(q, quant.scale, STATIC), quant.scale, out_dtype)
    out = torch.empty(rows.shape, dtype=out_dtype, device=device)  # scratch of the unquantized
    if rows.numel() <= ONE_PROGRAM_MAX:
        scale = torch.empty((), dtype=torch.float32, device=device)
        launch.norm_quant_one_program(out, q, scale)
        return QuantizedInput(q, scale, out_dtype)
    if rows.shape[0] <= PARTIALS_MAX:
        partials = torch.empty(rows.shape[0], dtype=torch.float32, device=device)
        q, scale = quantize_with_partials(launch.norm(out, partials, PARTIAL), partials,
                                          quant.dtype)
        return QuantizedInput(q, scale, out_dtype)
    return quant.quantize(launch.norm(out))


class _Launch:
    """The kernels' launches over the rows of one call (``res_out`` None: no residual)."""

    def __init__(self, rows: torch.Tensor, res_rows: torch.Tensor, weight: torch.Tensor,
                 res_out: torch.Tensor | None, eps: float) -> None:
        self.rows, self.res_rows, self.weight, self.res_out, self.eps = (
            rows, res_rows, weight, res_out, eps)
        self.block = triton.next_power_of_2(rows.shape[1])
        self.num_warps = min(max(self.block // 512, 1), 16)

    def norm(self, out: torch.Tensor, scale: torch.Tensor | None = None,
             mode: tl.constexpr = PLAIN) -> torch.Tensor:
        """One program per row into ``out`` (``x``'s shape): see ``_rms_norm_kernel``."""
        rows = self.rows
        if rows.shape[0] > 0:
            res_out = out if self.res_out is None else self.res_out
            _rms_norm_kernel[(rows.shape[0],)](
                rows, self.res_rows, self.weight, out, res_out, out if scale is None else scale,
                rows.stride(0), self.res_rows.stride(0), rows.shape[1], self.eps,
                BLOCK=self.block, HAS_RESIDUAL=self.res_out is not None,
                OUT_DTYPE=TL_DTYPES[torch.promote_types(self.weight.dtype, rows.dtype)],
                MODE=int(mode), FP8_MAX=torch.finfo(out.dtype).max if mode == STATIC else 0.0,
                **dependent_launch.launch_options(rows.device), num_warps=self.num_warps,
            )
        return out

    def norm_quant_one_program(self, out: torch.Tensor, q: torch.Tensor,
                               scale: torch.Tensor) -> None:
        rows = self.rows
        _rms_norm_quant_one_program[(1,)](
            rows, self.res_rows, self.weight, out, out if self.res_out is None else self.res_out,
            q, scale, rows.shape[0], rows.stride(0), self.res_rows.stride(0), rows.shape[1],
            self.eps, BLOCK=self.block, HAS_RESIDUAL=self.res_out is not None,
            FP8_MAX=torch.finfo(q.dtype).max, MIN_SCALE=MIN_SCALE, ONE_ROW=rows.shape[0] == 1,
            **dependent_launch.launch_options(rows.device), num_warps=self.num_warps,
        )


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 2-d tensor of rows with unit column stride (a view where possible)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()
