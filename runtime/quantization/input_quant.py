"""Per-tensor fp8 quantization of a linear layer's input, in one launch where it can be.

``quantize_input(x, scale)`` returns ``(q, scale)`` with ``q = clamp(x / scale)`` in e4m3, as
:func:`runtime.quantization.fp8_math.quantize` computes it; without a scale (dynamic), the scale is
``max |x| / 448``, computed on the device. No host synchronisation and no allocation outside the
caching allocator, so it may be captured in a CUDA graph. CPU tensors take the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.runtime.quantization.fp8_math import FP8_DTYPE, quantize

MIN_SCALE = 1e-12  # as fp8_math.scale_for: an all-zero input gets a tiny scale, not 0
ONE_PROGRAM_MAX = 16384  # dynamic inputs up to this many elements: one program (decode)
BLOCK = 1024


@triton.jit
def _quantize_one_program(x_ptr, q_ptr, scale_ptr, numel, FP8_MAX: tl.constexpr,
                          MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """Dynamic scale for a small input (``numel <= BLOCK``): one program loads ``x`` once,
    takes its max, stores the scale and the quantized values."""
    offs = tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=0), FP8_MAX), MIN_SCALE)
    tl.store(scale_ptr, scale)
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_blocks(x_ptr, q_ptr, scale_in_ptr, scale_out_ptr, numel, FROM_AMAX: tl.constexpr,
                     FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """One block of ``x`` per program, with a given scale, or (``FROM_AMAX``) with the scale
    derived from ``max |x|`` at ``scale_in_ptr``, which program 0 stores at ``scale_out_ptr``."""
    pid = tl.program_id(0)
    if FROM_AMAX:
        amax = tl.load(scale_in_ptr).to(tl.float32)
        scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX), MIN_SCALE)
        if pid == 0:
            tl.store(scale_out_ptr, scale)
    else:
        scale = tl.load(scale_in_ptr).to(tl.float32)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def quantize_input(
    x: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype = FP8_DTYPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` for ``x`` (any shape), ``q`` in the e4m3 ``dtype`` (fn, or fnuz on
    MI300-class GPUs): the static ``scale`` (0-d float32) when given, else a dynamic one (0-d
    float32, on ``x``'s device)."""
    if x.device.type != "cuda":
        return quantize(x, scale, dtype)
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    fp8_max = torch.finfo(dtype).max
    numel = x.numel()
    with torch.cuda.device(x.device):
        if scale is None and numel <= ONE_PROGRAM_MAX:
            scale = torch.empty((), dtype=torch.float32, device=x.device)
            block = triton.next_power_of_2(numel)
            _quantize_one_program[(1,)](x, q, scale, numel, fp8_max, MIN_SCALE, block,
                                        num_warps=max(4, min(16, block // 1024)))
            return q, scale
        grid = (triton.cdiv(numel, BLOCK),)
        if scale is None:
            amax = torch.linalg.vector_norm(x, ord=float("inf"))
            scale = torch.empty((), dtype=torch.float32, device=x.device)
            _quantize_blocks[grid](x, q, amax, scale, numel, True, fp8_max, MIN_SCALE, BLOCK)
        else:
            _quantize_blocks[grid](x, q, scale, scale, numel, False, fp8_max, MIN_SCALE, BLOCK)
    return q, scale
