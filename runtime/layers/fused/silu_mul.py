"""SiLU-and-mul of a fused gate/up projection output in one Triton kernel, optionally quantizing
its output for the fp8 linear layer it feeds (down_proj).

Computes what ``runtime.layers.activation.SiluAndMul.forward_native`` does: ``silu(gate)`` in
float32 rounded to the input dtype, times ``up``, rounded again; that rounded value is what is
quantized, so ``q`` is bit for bit what ``quantize_input`` makes of the unquantized output.
A dynamic scale is found as RMSNorm finds it (``runtime.layers.fused.rms_norm``): one program
for small outputs, partial maxima per block and one more launch, or ``quantize_input``.
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

BLOCK = 1024
# What a block program stores: its output; the output quantized; the output and its max |out|.
PLAIN = tl.constexpr(0)
STATIC = tl.constexpr(1)
PARTIAL = tl.constexpr(2)


@triton.jit
def _silu_mul_block(X, row, cols, ok, stride_x, d):
    """``silu(gate) * up`` of one block of a row, rounded to ``X``'s dtype, as float32."""
    gate = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + cols, mask=ok, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(X.dtype.element_ty).to(tl.float32)
    return (act * up).to(X.dtype.element_ty).to(tl.float32)


@triton.jit
def _silu_mul_kernel(X, OUT, SCALE, stride_x, stride_o, d, BLOCK: tl.constexpr,
                     MODE: tl.constexpr, FP8_MAX: tl.constexpr, PDL: tl.constexpr):
    """Block ``program_id(1)`` of row ``program_id(0)``. ``MODE`` PLAIN stores the output to
    ``OUT``; STATIC stores it quantized with the scale at ``SCALE`` to ``OUT`` (fp8); PARTIAL
    stores the output and the block's max magnitude to ``SCALE[row * num_programs(1) + block]``."""
    dependent_launch.enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < d
    out = _silu_mul_block(X, row, cols, ok, stride_x, d)
    if MODE == STATIC:
        out = quantize_values(out, tl.load(SCALE).to(tl.float32), FP8_MAX)
    tl.store(OUT + row * stride_o + cols, out.to(OUT.dtype.element_ty), mask=ok)
    if MODE == PARTIAL:
        tl.store(SCALE + row * tl.num_programs(1) + tl.program_id(1), tl.max(tl.abs(out), axis=0))


@triton.jit
def _silu_mul_quant_one_program(X, OUT, Q, SCALE, n_rows, stride_x, d, BLOCK: tl.constexpr,
                                FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr,
                                ONE_ROW: tl.constexpr, PDL: tl.constexpr):
    """Every row (of ``d <= BLOCK`` outputs) in one program: the outputs into ``OUT`` (scratch,
    contiguous) keeping the max, the dynamic scale to ``SCALE``, then ``OUT`` quantized into
    ``Q``; ``ONE_ROW`` (batch 1): the row is quantized from registers, ``OUT`` untouched."""
    dependent_launch.enter(PDL)
    cols = tl.arange(0, BLOCK)
    ok = cols < d
    if ONE_ROW:
        quantize_one_row(_silu_mul_block(X, 0, cols, ok, stride_x, d), Q, SCALE, cols, ok,
                         FP8_MAX, MIN_SCALE)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)  # per column, over the rows
        for row in range(n_rows):
            out = _silu_mul_block(X, row, cols, ok, stride_x, d)
            tl.store(OUT + row * d + cols, out.to(OUT.dtype.element_ty), mask=ok)
            amax = tl.maximum(amax, tl.abs(out))
        quantize_rows_with_max(OUT, Q, SCALE, amax, n_rows, d, cols, ok, FP8_MAX, MIN_SCALE)


def silu_and_mul(
    x: torch.Tensor, quant: InputQuant | None = None, separate: bool = False
) -> torch.Tensor | QuantizedInput:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` of width ``2d`` (gate then up); with ``quant``
    as a :class:`QuantizedInput` of its rows (for the fp8 linear layer it feeds), quantized in
    the same launch unless ``separate`` (then by ``quantize_input``)."""
    if x.shape[-1] % 2:
        raise ValueError(f"SiLU-and-mul needs an even width (gate then up), not {x.shape[-1]}")
    d = x.shape[-1] // 2
    rows = x.reshape(-1, 2 * d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if quant is None:
        return _launch(rows, torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device))
    shape = (rows.shape[0], d)
    if separate:
        return quant.quantize(_launch(rows, torch.empty(shape, dtype=x.dtype, device=x.device)))
    q = torch.empty(shape, dtype=quant.dtype, device=x.device)
    if quant.scale is not None:
        return QuantizedInput(_launch(rows, q, quant.scale, STATIC), quant.scale, x.dtype)
    out = torch.empty(shape, dtype=x.dtype, device=x.device)  # scratch of the unquantized
    if out.numel() <= ONE_PROGRAM_MAX:
        scale = torch.empty((), dtype=torch.float32, device=x.device)
        if out.numel() > 0:
            block = triton.next_power_of_2(d)  # <= ONE_PROGRAM_MAX: a whole row at once
            _silu_mul_quant_one_program[(1,)](
                rows, out, q, scale, rows.shape[0], rows.stride(0), d, BLOCK=block,
                FP8_MAX=torch.finfo(q.dtype).max, MIN_SCALE=MIN_SCALE, ONE_ROW=rows.shape[0] == 1,
                **dependent_launch.launch_options(rows.device),
                num_warps=max(4, min(16, block // 1024)),
            )
        return QuantizedInput(q, scale, x.dtype)
    n_partials = rows.shape[0] * triton.cdiv(d, BLOCK)
    if n_partials <= PARTIALS_MAX:
        partials = torch.empty(n_partials, dtype=torch.float32, device=x.device)
        q, scale = quantize_with_partials(_launch(rows, out, partials, PARTIAL), partials,
                                          quant.dtype)
        return QuantizedInput(q, scale, x.dtype)
    return quant.quantize(_launch(rows, out))


def _launch(rows: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None = None,
            mode: tl.constexpr = PLAIN) -> torch.Tensor:
    """One program per row and block of ``BLOCK`` columns into ``out``: see the kernel."""
    d = rows.shape[1] // 2
    if rows.shape[0] > 0 and d > 0:
        _silu_mul_kernel[(rows.shape[0], triton.cdiv(d, BLOCK))](
            rows, out, out if scale is None else scale, rows.stride(0), d, d, BLOCK=BLOCK,
            MODE=int(mode), FP8_MAX=torch.finfo(out.dtype).max if mode == STATIC else 0.0,
            **dependent_launch.launch_options(rows.device), num_warps=4,
        )
    return out
