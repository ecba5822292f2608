"""Per-tensor fp8 (e4m3) quantization arithmetic: quantize, dequantize, the requantization of
fused shards (qkv, gate_up) to one shared scale, as ROCm's vLLM does at load, and the conversion
of e4m3fn checkpoints for e4m3fnuz (MI300-class) hardware.

A quantized tensor ``q`` with scale ``s`` stands for ``q.float() * s``.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0


def scale_for(t: torch.Tensor, dtype: torch.dtype = FP8_DTYPE) -> torch.Tensor:
    """The per-tensor scale (0-d float32) that maps ``max |t|`` onto the range of the fp8
    ``dtype``; computed on the tensor's device without a host sync."""
    return (t.abs().amax().float() / torch.finfo(dtype).max).clamp_min(1e-12)


def quantize(t: torch.Tensor, scale: torch.Tensor | None = None,
             dtype: torch.dtype = FP8_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``q = clamp(t / scale)`` in the e4m3 ``dtype`` (``float8_e4m3fn``, or
    ``float8_e4m3fnuz`` on MI300-class GPUs); the scale is computed when not given."""
    scale = scale_for(t, dtype) if scale is None else scale.float()
    limit = torch.finfo(dtype).max
    q = (t.float() / scale).clamp(-limit, limit).to(dtype)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def requantize_shards(shards: list[torch.Tensor],
                      scales: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate fp8 shards (along dim 0) that carry different scales under one shared scale,
    the largest of them, so no shard's values overflow: ``q_i' = q_i * s_i / max(s)``."""
    if len(shards) != len(scales) or not shards:
        raise ValueError(f"need one scale per shard, got {len(shards)} shards"
                         f" and {len(scales)} scales")
    shared = torch.stack([s.float().reshape(()) for s in scales]).max()
    parts = [quantize(dequantize(q, s), shared)[0] for q, s in zip(shards, scales)]
    return torch.cat(parts, dim=0), shared


FNUZ_NAN_BITS = -128
"""0x80 as int8: -0.0 in e4m3fn, the only NaN in e4m3fnuz."""


def e4m3fn_to_e4m3fnuz(
    weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An e4m3fn checkpoint's weight and scales for e4m3fnuz hardware (MI300-class), as ROCm's
    vLLM converts them: the weight's bit patterns reinterpreted as fnuz (each then stands for half
    its e4m3fn value; 0x80, fn's -0.0 and fnuz's NaN, becomes 0), the scales doubled, so that
    ``weight * weight_scale`` is unchanged. fn's NaNs (0x7F, 0xFF) have no fnuz meaning; a
    checkpoint holds none. Returns new tensors; the inputs are not modified."""
    if weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"e4m3fn_to_e4m3fnuz needs a float8_e4m3fn weight, not {weight.dtype}")
    bits = weight.view(torch.int8)
    bits = torch.where(bits == FNUZ_NAN_BITS, torch.zeros_like(bits), bits)
    doubled = None if input_scale is None else input_scale * 2.0
    return bits.view(torch.float8_e4m3fnuz), weight_scale * 2.0, doubled
