"""Rotary position embedding applied in place to the queries and keys of one step, in one Triton
kernel (one program per token, every query and key head of it), optionally writing the rotated
keys and the values into the paged KV cache in the same program.

Computes what ``runtime.layers.rotary.RotaryEmbedding.forward_native`` does: each head's halves
``(x1, x2)`` become ``(x1 cos - x2 sin, x2 cos + x1 sin)`` in float32, rounded to the input dtype,
with ``cos``/``sin`` read from the layer's float32 table at the token's position. The cache gets
what ``runtime.attention.triton_store`` writes for those rounded keys (``kv_cache_value``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.attention.reference import FP8_E4M3_MAX
from solidx.runtime.attention.triton_store import kv_cache_value


@triton.jit
def _rotate_heads(BASE, num_heads, cos, sin, HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
                  HALF: tl.constexpr):
    """Rotate ``num_heads`` consecutive heads of size ``2 * HALF`` starting at ``BASE`` in place;
    returns the rotated halves as stored (rounded), in float32, ``[HEADS_PAD, HALF_PAD]`` each."""
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HALF_PAD)
    ok = (offs_h < num_heads)[:, None] & (offs_d < HALF)[None, :]
    first = BASE + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
    x1 = tl.load(first, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=ok, other=0.0).to(tl.float32)
    out1 = (x1 * cos - x2 * sin).to(BASE.dtype.element_ty)
    out2 = (x2 * cos + x1 * sin).to(BASE.dtype.element_ty)
    tl.store(first, out1, mask=ok)
    tl.store(first + HALF, out2, mask=ok)
    return out1.to(tl.float32), out2.to(tl.float32)


@triton.jit
def _cos_sin(POSITIONS, COS_SIN, token, stride_cs, HALF_PAD: tl.constexpr, HALF: tl.constexpr):
    """The token's cosines and sines, float32, ``[1, HALF_PAD]`` each."""
    pos = tl.load(POSITIONS + token).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    d_ok = offs_d < HALF
    cos = tl.load(COS_SIN + pos * stride_cs + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.load(COS_SIN + pos * stride_cs + HALF + offs_d, mask=d_ok, other=0.0)
    return cos[None, :], sin.to(tl.float32)[None, :]


@triton.jit
def _rotary_kernel(Q, K, POSITIONS, COS_SIN, stride_qt, stride_kt, stride_cs, num_q_heads,
                   num_kv_heads, Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr,
                   HALF_PAD: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(POSITIONS, COS_SIN, token, stride_cs, HALF_PAD, HALF)
    _rotate_heads(Q + token * stride_qt, num_q_heads, cos, sin, Q_HEADS_PAD, HALF_PAD, HALF)
    _rotate_heads(K + token * stride_kt, num_kv_heads, cos, sin, K_HEADS_PAD, HALF_PAD, HALF)


@triton.jit
def _store_halves(CACHE, first_half, second_half, scale, num_heads, stride_h,
                  HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr, HALF: tl.constexpr,
                  FP8: tl.constexpr, FP8_MAX: tl.constexpr):
    """Store one slot's heads (halves ``[HEADS_PAD, HALF_PAD]``, float32) at ``CACHE``."""
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HALF_PAD)
    ok = (offs_h < num_heads)[:, None] & (offs_d < HALF)[None, :]
    first = CACHE + offs_h[:, None] * stride_h + offs_d[None, :]
    first_half = kv_cache_value(first_half, scale, FP8, FP8_MAX)
    second_half = kv_cache_value(second_half, scale, FP8, FP8_MAX)
    tl.store(first, first_half.to(CACHE.dtype.element_ty), mask=ok)
    tl.store(first + HALF, second_half.to(CACHE.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_store_kernel(Q, K, V, POSITIONS, COS_SIN, K_CACHE, V_CACHE, SLOT_MAPPING,
                         k_scale, v_scale, stride_qt, stride_kt, stride_vt, stride_cs,
                         stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                         num_q_heads, num_kv_heads, Q_HEADS_PAD: tl.constexpr,
                         K_HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr, HALF: tl.constexpr,
                         PAGE_SIZE: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr,
                         PDL: tl.constexpr):
    """Token ``program_id``: rotate its query and key heads in place; unless its slot is -1,
    store its rotated keys and its values at the slot."""
    dependent_launch.enter(PDL)
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(POSITIONS, COS_SIN, token, stride_cs, HALF_PAD, HALF)
    _rotate_heads(Q + token * stride_qt, num_q_heads, cos, sin, Q_HEADS_PAD, HALF_PAD, HALF)
    k1, k2 = _rotate_heads(K + token * stride_kt, num_kv_heads, cos, sin, K_HEADS_PAD, HALF_PAD,
                           HALF)
    slot = tl.load(SLOT_MAPPING + token).to(tl.int64)
    if slot >= 0:
        offs_h = tl.arange(0, K_HEADS_PAD)
        offs_d = tl.arange(0, HALF_PAD)
        ok = (offs_h < num_kv_heads)[:, None] & (offs_d < HALF)[None, :]
        v_first = V + token * stride_vt + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
        v1 = tl.load(v_first, mask=ok, other=0.0).to(tl.float32)
        v2 = tl.load(v_first + HALF, mask=ok, other=0.0).to(tl.float32)
        block, offset = slot // PAGE_SIZE, slot % PAGE_SIZE
        _store_halves(K_CACHE + block * stride_kb + offset * stride_ks, k1, k2, k_scale,
                      num_kv_heads, stride_kh, K_HEADS_PAD, HALF_PAD, HALF, FP8, FP8_MAX)
        _store_halves(V_CACHE + block * stride_vb + offset * stride_vs, v1, v2, v_scale,
                      num_kv_heads, stride_vh, K_HEADS_PAD, HALF_PAD, HALF, FP8, FP8_MAX)


def _check(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
           cos_sin_cache: torch.Tensor, head_dim: int) -> tuple[int, int]:
    """``(query heads, KV heads)`` of ``q`` and ``k``; ValueError when they cannot be rotated
    in place."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[0] != k.shape[0] or positions.shape != q.shape[:1]:
        raise ValueError(
            f"rotary needs q [T, Hq*D], k [T, Hkv*D] and positions [T], not "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(positions.shape)}"
        )
    if head_dim % 2 or q.shape[1] % head_dim or k.shape[1] % head_dim:
        raise ValueError(f"rows of {q.shape[1]} and {k.shape[1]} are not heads of {head_dim}")
    if q.stride(1) != 1 or k.stride(1) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("rotary rotates in place: q, k and the cache need unit column stride")
    return q.shape[1] // head_dim, k.shape[1] // head_dim


def _sizes(num_q_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
    return {
        "Q_HEADS_PAD": triton.next_power_of_2(num_q_heads),
        "K_HEADS_PAD": triton.next_power_of_2(num_kv_heads),
        "HALF_PAD": triton.next_power_of_2(head_dim // 2),
        "HALF": head_dim // 2,
    }


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [T, Hq*D] and ``k`` [T, Hkv*D] (rows of unit column stride, e.g. views of a
    fused qkv output) in place by ``positions`` [T]; ``cos_sin_cache`` is [max_position, D] with
    the cosines then the sines. Returns ``(q, k)``."""
    num_q_heads, num_kv_heads = _check(positions, q, k, cos_sin_cache, head_dim)
    if q.shape[0] > 0:
        _rotary_kernel[(q.shape[0],)](
            q, k, positions, cos_sin_cache, q.stride(0), k.stride(0), cos_sin_cache.stride(0),
            num_q_heads, num_kv_heads, **_sizes(num_q_heads, num_kv_heads, head_dim),
            **dependent_launch.launch_options(q.device), num_warps=4,
        )
    return q, k


def rotary_embedding_store_kv(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos_sin_cache: torch.Tensor, head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """:func:`rotary_embedding` of ``q`` and ``k`` in place, and token ``t``'s rotated keys and
    its values (``v`` [T, Hkv*D]) written at ``slot_mapping[t]`` (int32, -1 skips the token)
    into the paged caches ([num_blocks, block_size, Hkv, D]) as ``store_kvcache`` writes them:
    one launch for the rotary and the cache write."""
    num_q_heads, num_kv_heads = _check(positions, q, k, cos_sin_cache, head_dim)
    if v.shape != k.shape or v.stride(1) != 1 or slot_mapping.shape != q.shape[:1]:
        raise ValueError(
            f"values {tuple(v.shape)} (unit column stride) and slot_mapping "
            f"{tuple(slot_mapping.shape)} must match keys {tuple(k.shape)}"
        )
    if k_cache.shape[2:] != (num_kv_heads, head_dim) or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shape {tuple(k_cache.shape)} does not hold keys {tuple(k.shape)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the caches must be contiguous in the head dimension")
    if q.shape[0] == 0:
        return
    _rotary_store_kernel[(q.shape[0],)](
        q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, k_scale, v_scale,
        q.stride(0), k.stride(0), v.stride(0), cos_sin_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        num_q_heads, num_kv_heads, **_sizes(num_q_heads, num_kv_heads, head_dim),
        PAGE_SIZE=k_cache.shape[1], FP8=k_cache.dtype == torch.float8_e4m3fn,
        FP8_MAX=FP8_E4M3_MAX, **dependent_launch.launch_options(q.device), num_warps=4,
    )
