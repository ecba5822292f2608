"""Rotary position embedding applied in place to the queries and keys of one step, in one Triton
kernel (one program per token, every query and key head of it).

Computes what ``runtime.layers.rotary.RotaryEmbedding.forward_native`` does: each head's halves
``(x1, x2)`` become ``(x1 cos - x2 sin, x2 cos + x1 sin)`` in float32, rounded to the input dtype,
with ``cos``/``sin`` read from the layer's float32 table at the token's position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(BASE, num_heads, cos, sin, HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
                  HALF: tl.constexpr):
    """Rotate ``num_heads`` consecutive heads of size ``2 * HALF`` starting at ``BASE``."""
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HALF_PAD)
    ok = (offs_h < num_heads)[:, None] & (offs_d < HALF)[None, :]
    first = BASE + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
    x1 = tl.load(first, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=ok, other=0.0).to(tl.float32)
    tl.store(first, (x1 * cos - x2 * sin).to(BASE.dtype.element_ty), mask=ok)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(BASE.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_kernel(Q, K, POSITIONS, COS_SIN, stride_qt, stride_kt, stride_cs, num_q_heads,
                   num_kv_heads, Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr,
                   HALF_PAD: tl.constexpr, HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(POSITIONS + token).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    d_ok = offs_d < HALF
    cos = tl.load(COS_SIN + pos * stride_cs + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(COS_SIN + pos * stride_cs + HALF + offs_d, mask=d_ok, other=0.0)
    sin = sin.to(tl.float32)[None, :]
    _rotate_heads(Q + token * stride_qt, num_q_heads, cos, sin, Q_HEADS_PAD, HALF_PAD, HALF)
    _rotate_heads(K + token * stride_kt, num_kv_heads, cos, sin, K_HEADS_PAD, HALF_PAD, HALF)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [T, Hq*D] and ``k`` [T, Hkv*D] (rows of unit column stride, e.g. views of a
    fused qkv output) in place by ``positions`` [T]; ``cos_sin_cache`` is [max_position, D] with
    the cosines then the sines. Returns ``(q, k)``."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[0] != k.shape[0] or positions.shape != q.shape[:1]:
        raise ValueError(
            f"rotary needs q [T, Hq*D], k [T, Hkv*D] and positions [T], not "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(positions.shape)}"
        )
    if head_dim % 2 or q.shape[1] % head_dim or k.shape[1] % head_dim:
        raise ValueError(f"rows of {q.shape[1]} and {k.shape[1]} are not heads of {head_dim}")
    if q.stride(1) != 1 or k.stride(1) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("rotary rotates in place: q, k and the cache need unit column stride")
    num_q_heads, num_kv_heads = q.shape[1] // head_dim, k.shape[1] // head_dim
    if q.shape[0] > 0:
        _rotary_kernel[(q.shape[0],)](
            q, k, positions, cos_sin_cache, q.stride(0), k.stride(0), cos_sin_cache.stride(0),
            num_q_heads, num_kv_heads,
            Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
            K_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
            HALF_PAD=triton.next_power_of_2(head_dim // 2), HALF=head_dim // 2,
            num_warps=4,
        )
    return q, k
