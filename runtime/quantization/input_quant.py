"""Per-tensor fp8 quantization of a linear layer's input, in one launch where it can be.

``quantize_input(x, scale)`` returns ``(q, scale)`` with ``q = clamp(x / scale)`` in e4m3, as
:func:`runtime.quantization.fp8_math.quantize` computes it; without a scale (dynamic), the scale is
``max |x| / 448``, computed on the device. No host synchronisation and no allocation outside the
caching allocator, so it may be captured in a CUDA graph. CPU tensors take the torch path.

The kernel that produces a linear layer's input may quantize it instead (RMSNorm, SiLU-and-mul):
the layer says how with an :class:`InputQuant` and takes the result as a :class:`QuantizedInput`.
Such a kernel rounds with :func:`quantize_values` and :func:`dynamic_scale`, so its output is bit
for bit what ``quantize_input`` gives for the tensor it would have written; for a dynamic scale
over many programs it writes partial maxima and :func:`quantize_with_partials` finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.quantization.fp8_math import FP8_DTYPE, quantize

MIN_SCALE = 1e-12  # as fp8_math.scale_for: an all-zero input gets a tiny scale, not 0
ONE_PROGRAM_MAX = 16384  # dynamic inputs up to this many elements: one program (decode)
BLOCK = 1024
PARTIALS_MAX = 1024  # quantize_with_partials: every program reduces up to this many maxima
PARTIALS_BLOCK = 4096


@dataclass(frozen=True)
class InputQuant:
    """How an fp8 linear layer quantizes its input per tensor: with the checkpoint's ``scale``
    (0-d float32, static) or, when None, with ``max |x| / fp8 max`` (dynamic); ``dtype`` is the
    e4m3 encoding (fn, or fnuz on MI300-class GPUs)."""

    scale: torch.Tensor | None
    dtype: torch.dtype

    def quantize(self, x: torch.Tensor) -> QuantizedInput:
        """The rows of ``x`` [..., in] quantized by launches of their own
        (:func:`quantize_input`)."""
        q, scale = quantize_input(x.reshape(-1, x.shape[-1]), self.scale, self.dtype)
        return QuantizedInput(q, scale, x.dtype)


@dataclass(frozen=True)
class QuantizedInput:
    """A linear layer's input, quantized as the layer's :class:`InputQuant` says by the kernel
    that produced it: ``q`` [tokens, in] in e4m3 stands for ``q * scale`` (0-d float32);
    ``dtype`` is the dtype of the tensor it replaces (the layer's output dtype)."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype


@triton.jit
def round_to_e4m3(x, MIN_EXPONENT: tl.constexpr):
    """``x`` (fp32, within the fp8 range) rounded to the nearest e4m3 value, ties to even, so the
    cast to fp8 is exact everywhere (the Triton interpreter's own cast rounds wrongly: values
    just below a power of two, subnormals). ``MIN_EXPONENT`` is the smallest normal's exponent:
    -6 for e4m3fn, whose zeros keep their sign as the hardware's cast keeps it, or -7 for
    e4m3fnuz, whose one zero is +0 (its -0 pattern is NaN); subnormals share its spacing."""
    bits = x.to(tl.int32, bitcast=True)
    exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_EXPONENT)
    quantum = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
    per_quantum = ((127 - exponent + 3) << 23).to(tl.float32, bitcast=True)  # 1 / quantum
    magnitude = ((tl.abs(x) * per_quantum + 12582912.0) - 12582912.0) * quantum  # 1.5 * 2**23
    sign = (bits >> 31) << 31
    if MIN_EXPONENT == -7:
        sign = tl.where(magnitude == 0.0, 0, sign)
    return (magnitude.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def dynamic_scale(amax, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    """The per-tensor scale for the largest magnitude ``amax`` (float32)."""
    return tl.maximum(tl.math.div_rn(amax, FP8_MAX), MIN_SCALE)


@triton.jit
def quantize_values(x, scale, FP8_MAX: tl.constexpr):
    """``x / scale`` (float32, correctly rounded) saturated to the range of the e4m3 encoding
    whose largest value is ``FP8_MAX`` (448: fn, 240: fnuz) and rounded to it; cast it to
    store (exactly)."""
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
    if FP8_MAX == 448.0:
        q = round_to_e4m3(q, -6)
    else:
        q = round_to_e4m3(q, -7)
    return q


@triton.jit
def quantize_one_row(out, Q, SCALE, cols, ok, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    """The end of a one-program producer of a single row ``out`` (float32, in registers; masked
    columns 0): store its dynamic scale at ``SCALE`` and the row quantized at ``Q + cols``."""
    scale = dynamic_scale(tl.max(tl.abs(out), axis=0), FP8_MAX, MIN_SCALE)
    tl.store(SCALE, scale)
    q = quantize_values(out, scale, FP8_MAX)
    tl.store(Q + cols, q.to(Q.dtype.element_ty), mask=ok)


@triton.jit
def quantize_rows_with_max(OUT, Q, SCALE, amax, n_rows, n_cols, cols, ok,
                           FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    """The second half of a one-program producer that stored ``n_rows`` contiguous rows in
    ``OUT`` keeping their per-column max magnitude ``amax``: store the dynamic scale at
    ``SCALE``, then quantize ``OUT`` into ``Q``."""
    scale = dynamic_scale(tl.max(amax, axis=0), FP8_MAX, MIN_SCALE)
    tl.store(SCALE, scale)
    tl.debug_barrier()  # every row stored before any is read back
    for row in range(n_rows):
        out = tl.load(OUT + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
        q = quantize_values(out, scale, FP8_MAX)
        tl.store(Q + row * n_cols + cols, q.to(Q.dtype.element_ty), mask=ok)


@triton.jit
def _quantize_one_program(x_ptr, q_ptr, scale_ptr, numel, FP8_MAX: tl.constexpr,
                          MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Dynamic scale for a small input (``numel <= BLOCK``): one program loads ``x`` once,
    takes its max, stores the scale and the quantized values."""
    dependent_launch.enter(PDL)
    offs = tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    quantize_one_row(x, q_ptr, scale_ptr, offs, mask, FP8_MAX, MIN_SCALE)


@triton.jit
def _quantize_blocks(x_ptr, q_ptr, scale_in_ptr, scale_out_ptr, numel, FROM_AMAX: tl.constexpr,
                     FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    """One block of ``x`` per program, with a given scale, or (``FROM_AMAX``) with the scale
    derived from ``max |x|`` at ``scale_in_ptr``, which program 0 stores at ``scale_out_ptr``."""
    dependent_launch.enter(PDL)
    pid = tl.program_id(0)
    if FROM_AMAX:
        scale = dynamic_scale(tl.load(scale_in_ptr).to(tl.float32), FP8_MAX, MIN_SCALE)
        if pid == 0:
            tl.store(scale_out_ptr, scale)
    else:
        scale = tl.load(scale_in_ptr).to(tl.float32)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = quantize_values(x, scale, FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_partials(x_ptr, q_ptr, partials_ptr, scale_ptr, numel, n_partials,
                       FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr,
                       PARTIALS_PAD: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """One block of ``x`` per program; every program reduces the ``n_partials`` maxima to the
    dynamic scale (no launch for the max), program 0 stores it."""
    dependent_launch.enter(PDL)
    pid = tl.program_id(0)
    offs_p = tl.arange(0, PARTIALS_PAD)
    partials = tl.load(partials_ptr + offs_p, mask=offs_p < n_partials, other=0.0)
    scale = dynamic_scale(tl.max(partials, axis=0), FP8_MAX, MIN_SCALE)
    if pid == 0:
        tl.store(scale_ptr, scale)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = quantize_values(x, scale, FP8_MAX)
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
    launch = dependent_launch.launch_options(x.device)
    with torch.cuda.device(x.device):
        if scale is None and numel <= ONE_PROGRAM_MAX:
            scale = torch.empty((), dtype=torch.float32, device=x.device)
            block = triton.next_power_of_2(numel)
            _quantize_one_program[(1,)](x, q, scale, numel, fp8_max, MIN_SCALE, block,
                                        **launch, num_warps=max(4, min(16, block // 1024)))
            return q, scale
        grid = (triton.cdiv(numel, BLOCK),)
        if scale is None:
            amax = torch.linalg.vector_norm(x, ord=float("inf"))
            scale = torch.empty((), dtype=torch.float32, device=x.device)
            _quantize_blocks[grid](x, q, amax, scale, numel, True, fp8_max, MIN_SCALE, BLOCK,
                                   **launch)
        else:
            _quantize_blocks[grid](x, q, scale, scale, numel, False, fp8_max, MIN_SCALE, BLOCK,
                                   **launch)
    return q, scale


def quantize_with_partials(
    x: torch.Tensor, partials: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` for the contiguous ``x`` with the dynamic scale, where ``partials`` (at
    most ``PARTIALS_MAX`` float32) are the maxima of ``|x|`` over parts that cover it, written by
    the kernel that wrote ``x``: one launch, the same result as ``quantize_input(x)``."""
    if partials.numel() > PARTIALS_MAX or not x.is_contiguous():
        raise ValueError(
            f"quantize_with_partials needs a contiguous input and at most {PARTIALS_MAX} "
            f"partial maxima, not {partials.numel()}"
        )
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scale = torch.empty((), dtype=torch.float32, device=x.device)
    numel = x.numel()
    if numel > 0:
        _quantize_partials[(triton.cdiv(numel, PARTIALS_BLOCK),)](
            x, q, partials, scale, numel, partials.numel(), torch.finfo(dtype).max, MIN_SCALE,
            triton.next_power_of_2(partials.numel()), PARTIALS_BLOCK,
            **dependent_launch.launch_options(x.device), num_warps=8,
        )
    return q, scale
