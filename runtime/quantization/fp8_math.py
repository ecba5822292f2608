"""Per-tensor fp8 (e4m3) quantization arithmetic: quantize, dequantize, and the requantization of
fused shards (qkv, gate_up) to one shared scale, as ROCm's vLLM does at load.

A quantized tensor ``q`` with scale ``s`` stands for ``q.float() * s``.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0


def scale_for(t: torch.Tensor) -> torch.Tensor:
    """The per-tensor scale (0-d float32) that maps ``max |t|`` onto the fp8 range; computed on the
    tensor's device without a host sync."""
    return (t.abs().amax().float() / FP8_MAX).clamp_min(1e-12)


def quantize(t: torch.Tensor,
             scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``q = clamp(t / scale)`` in e4m3; the scale is computed when not
    given."""
    scale = scale_for(t) if scale is None else scale.float()
    q = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
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
