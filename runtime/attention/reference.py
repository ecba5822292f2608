"""Plain torch attention: the CPU path and the oracle every kernel is tested against.

Written for clarity, not speed: one sequence at a time, fp32 arithmetic, no fusion.
The KV cache is ``[num_blocks, block_size, num_kv_heads, head_size]``; slot
``s = block_id * block_size + offset``. An fp8 cache stores ``value / scale``.
"""
from __future__ import annotations

import torch
from torch import Tensor

FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max


def quantize_kv(x: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """``x`` as the cache stores it: unchanged in the model dtype, ``x / scale`` saturated for
    fp8."""
    if dtype == torch.float8_e4m3fn:
        return (x.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(dtype)
    return x.to(dtype)


def store_kvcache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                  k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Write token ``t`` of ``k``/``v`` ([T, Hkv, D]) to slot ``slot_mapping[t]``; -1 skips it."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    num_blocks, block_size, num_kv_heads, head_size = k_cache.shape
    k_flat = k_cache.view(num_blocks * block_size, num_kv_heads, head_size)
    v_flat = v_cache.view(num_blocks * block_size, num_kv_heads, head_size)
    k_flat[slots] = quantize_kv(k[keep], k_scale, k_cache.dtype)
    v_flat[slots] = quantize_kv(v[keep], v_scale, v_cache.dtype)


def gather_kv(cache: Tensor, block_table: Tensor, length: int, scale: float) -> Tensor:
    """The first ``length`` tokens of one sequence from the paged cache, fp32, dequantized."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    blocks = block_table[:num_blocks].long()
    tokens = cache[blocks].reshape(num_blocks * block_size, *cache.shape[2:])[:length]
    return tokens.float() * scale


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of one sequence in fp32, queries aligned to the end of the keys.

    q: [Lq, Hq, D]; k, v: [Lk, Hkv, D] with Lk >= Lq; query ``j`` sees keys ``0 .. Lk - Lq + j``.
    """
    q_len, num_heads, _ = q.shape
    k_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    key_pos = torch.arange(k_len, device=q.device)
    query_pos = torch.arange(q_len, device=q.device) + (k_len - q_len)
    scores.masked_fill_(key_pos[None, :] > query_pos[:, None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)


def check_gqa(num_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads"
                         f" ({num_kv_heads})")


def prefill_attention(q: Tensor, k: Tensor | None, v: Tensor | None, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float,
                      k_cache: Tensor | None = None, v_cache: Tensor | None = None,
                      block_tables: Tensor | None = None,
                      k_scale: float = 1.0, v_scale: float = 1.0) -> Tensor:
    """Varlen causal GQA attention; keys from ``k``/``v`` or, with ``block_tables``, the paged
    cache."""
    out = torch.zeros_like(q)
    cu_q = cu_seqlens_q.tolist()
    cu_k = cu_seqlens_k.tolist()
    for i in range(len(cu_q) - 1):
        q_i = q[cu_q[i]:cu_q[i + 1]]
        k_len = cu_k[i + 1] - cu_k[i]
        if q_i.shape[0] == 0:
            continue
        if k_len < q_i.shape[0]:
            raise ValueError(f"sequence {i}: {k_len} keys for {q_i.shape[0]} queries")
        if block_tables is None:
            k_i, v_i = k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        else:
            k_i = gather_kv(k_cache, block_tables[i], k_len, k_scale)
            v_i = gather_kv(v_cache, block_tables[i], k_len, v_scale)
        check_gqa(q.shape[1], k_i.shape[1])
        out[cu_q[i]:cu_q[i + 1]] = attend(q_i, k_i, v_i, scale).to(q.dtype)
    return out


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                     context_lens: Tensor, max_context_len: int, scale: float,
                     k_scale: float = 1.0, v_scale: float = 1.0) -> Tensor:
    """One query per sequence over its ``context_lens[b]`` cached tokens; length 0 gives zeros."""
    check_gqa(q.shape[1], k_cache.shape[2])
    out = torch.zeros_like(q)
    for b, length in enumerate(context_lens.tolist()):
        if length == 0:
            continue
        k_b = gather_kv(k_cache, block_tables[b], length, k_scale)
        v_b = gather_kv(v_cache, block_tables[b], length, v_scale)
        out[b] = attend(q[b:b + 1], k_b, v_b, scale)[0].to(q.dtype)
    return out
