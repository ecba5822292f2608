"""Per-tensor fp8 arithmetic and the fused-shard requantization."""
from __future__ import annotations

import pytest
import torch

from solidx.runtime.quantization.fp8_math import FP8_MAX, dequantize, quantize, requantize_shards


def test_quantize_round_trip_error() -> None:
    t = torch.randn(64, 48) * 3
    q, s = quantize(t)
    assert q.dtype == torch.float8_e4m3fn and s.shape == ()
    assert float(q.float().abs().max()) == FP8_MAX
    rel = (dequantize(q, s) - t).abs().max() / t.abs().max()
    assert rel < 2**-3  # e4m3 keeps 3 mantissa bits


def test_requantize_shards_exact() -> None:
    torch.manual_seed(0)
    shards, scales = [], []
    for rows, spread in ((8, 1.0), (4, 10.0), (4, 0.1)):
        q, s = quantize(torch.randn(rows, 16) * spread)
        shards.append(q)
        scales.append(s)
    fused, shared = requantize_shards(shards, scales)
    assert shared == max(scales)
    expected = torch.cat([
        ((q.float() * s) / shared).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        for q, s in zip(shards, scales)
    ])
    assert torch.equal(fused.view(torch.uint8), expected.view(torch.uint8))
    # The shard that owned the largest scale is unchanged.
    assert torch.equal(fused[8:12].view(torch.uint8), shards[1].view(torch.uint8))


def test_requantize_needs_one_scale_per_shard() -> None:
    with pytest.raises(ValueError, match="one scale per shard"):
        requantize_shards([torch.zeros(2, 2, dtype=torch.float8_e4m3fn)], [])
