"""Prefill attention in Triton: flash attention over variable-length packed sequences.

Causal with queries aligned to the end of each sequence's keys, GQA, fp16/bf16 (fp32 under the
interpreter), any head size (padded to a power of two). Keys and values come from the packed
``k``/``v`` tensors or, with ``block_tables``, from the paged cache (fp8 caches are upcast
in-kernel). One program computes ``BLOCK_M`` queries of one head of one sequence with an online
softmax; key blocks wholly below the diagonal run without masks, the diagonal blocks with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from solidx.gradlib.kernels import dependent_launch

LOG2E = 1.0 / math.log(2.0)


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_config(head_pad: int, device: torch.device) -> PrefillConfig:
    """The launch configuration for a padded head size (small blocks under the interpreter)."""
    if device.type == "cpu":
        return PrefillConfig(16, 16, 1, 1)
    if head_pad <= 128:
        return PrefillConfig(64, 64, 4, 3)  # the fastest of bench.PREFILL_SWEEP on an H200 (D=128)
    return PrefillConfig(64, 32, 8, 2)


@triton.jit
def _load_keys(base, table, pos, k_start, kv_head, d, stride_b, stride_s, stride_h, mask,
               PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Load keys/values at sequence positions ``pos``: [D, N] when TRANSPOSE else [N, D]."""
    if PAGED:
        block = tl.load(table + pos // PAGE_SIZE).to(tl.int64)
        row = block * stride_b + (pos % PAGE_SIZE) * stride_s + kv_head * stride_h
    else:
        row = (k_start + pos) * stride_b + kv_head * stride_h
    if TRANSPOSE:
        x = tl.load(base + row[None, :] + d[:, None], mask=mask, other=0.0)
    else:
        x = tl.load(base + row[:, None] + d[None, :], mask=mask, other=0.0)
    return x


@triton.jit
def _attend_block(acc, m_i, l_i, q, K, V, table, start, k_start, k_len, q_pos, kv_head,
                  offs_n, offs_d, d_ok, qk_scale, stride_kb, stride_ks, stride_kh,
                  stride_vb, stride_vs, stride_vh,
                  MASK: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr):
    pos = start + offs_n
    if MASK:
        n_ok = pos < k_len
        safe_pos = tl.where(n_ok, pos, 0)
        kt = _load_keys(K, table, safe_pos, k_start, kv_head, offs_d, stride_kb, stride_ks,
                        stride_kh, n_ok[None, :] & d_ok[:, None], PAGED, PAGE_SIZE, True)
        v = _load_keys(V, table, safe_pos, k_start, kv_head, offs_d, stride_vb, stride_vs,
                       stride_vh, n_ok[:, None] & d_ok[None, :], PAGED, PAGE_SIZE, False)
    else:
        kt = _load_keys(K, table, pos, k_start, kv_head, offs_d, stride_kb, stride_ks,
                        stride_kh, d_ok[:, None], PAGED, PAGE_SIZE, True)
        v = _load_keys(V, table, pos, k_start, kv_head, offs_d, stride_vb, stride_vs,
                       stride_vh, d_ok[None, :], PAGED, PAGE_SIZE, False)
    qk = tl.dot(q, kt.to(q.dtype)) * qk_scale
    if MASK:
        visible = (pos[None, :] <= q_pos[:, None]) & (pos[None, :] < k_len)
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
    return acc, m_new, l_i


@triton.jit
def _prefill_kernel(O, Q, K, V, CU_Q, CU_K, BLOCK_TABLES, qk_scale, v_scale,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                    GROUP: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
                    PAGE_SIZE: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest rows of the causal mask first
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(CU_Q + seq)
    q_len = tl.load(CU_Q + seq + 1) - q_start
    if m_block * BLOCK_M >= q_len:
        return
    k_start = tl.load(CU_K + seq)
    k_len = tl.load(CU_K + seq + 1) - k_start
    offset = k_len - q_len

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_PAD)
    d_ok = offs_d < HEAD_SIZE
    m_ok = offs_m < q_len
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    table = BLOCK_TABLES + seq.to(tl.int64) * stride_bt

    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_pos = offset + offs_m
    # Keys before the block's first query position are visible to all its rows: no masks.
    unmasked_end = (offset + m_block * BLOCK_M) // BLOCK_N * BLOCK_N
    for start in range(0, unmasked_end, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, K, V, table, start, k_start, k_len,
                                      q_pos, kv_head, offs_n, offs_d, d_ok, qk_scale,
                                      stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                                      stride_vh, False, PAGED, PAGE_SIZE)
    end = tl.minimum(offset + (m_block + 1) * BLOCK_M, k_len)
    for start in range(unmasked_end, end, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, K, V, table, start, k_start, k_len,
                                      q_pos, kv_head, offs_n, offs_d, d_ok, qk_scale,
                                      stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                                      stride_vh, True, PAGED, PAGE_SIZE)
    out = acc * (v_scale / l_i)[:, None]
    tl.store(O + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def prefill_attention(q: Tensor, k: Tensor | None, v: Tensor | None, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float,
                      k_cache: Tensor | None = None, v_cache: Tensor | None = None,
                      block_tables: Tensor | None = None, k_scale: float = 1.0,
                      v_scale: float = 1.0, config: PrefillConfig | None = None) -> Tensor:
    """Varlen causal GQA flash attention; ``q``: [Tq, Hq, D] -> [Tq, Hq, D] (contract: the
    docstring of ``solidx.runtime.attention``).

    Without ``block_tables`` keys come from ``k``/``v`` ([Tk, Hkv, D]); with it, every key of
    sequence ``i`` comes from the paged cache through ``block_tables[i]``.
    """
    num_tokens, num_heads, head_size = q.shape
    paged = block_tables is not None
    if paged:
        if k_cache is None or v_cache is None:
            raise ValueError("prefill from the paged cache needs k_cache and v_cache")
        keys, values, table = k_cache, v_cache, block_tables
        page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
        kb, ks, kh = k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)
        vb, vs, vh = v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)
        stride_bt = block_tables.stride(0)
    else:
        if k is None or v is None:
            raise ValueError("prefill needs k and v, or the paged cache and block_tables")
        keys, values, table = k, v, cu_seqlens_k  # table unused without paging
        page_size, num_kv_heads = 1, k.shape[1]
        kb, ks, kh = k.stride(0), 0, k.stride(1)
        vb, vs, vh = v.stride(0), 0, v.stride(1)
        stride_bt = 0
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads"
                         f" ({num_kv_heads})")
    for t in (q, keys, values):
        if t.stride(-1) != 1:
            raise ValueError("attention tensors must be contiguous in the head dimension")
    out = torch.empty_like(q)
    batch = cu_seqlens_q.numel() - 1
    if num_tokens == 0 or batch == 0 or max_seqlen_q == 0:
        return out
    head_pad = max(16, triton.next_power_of_2(head_size))
    cfg = config or default_config(head_pad, q.device)
    grid = (triton.cdiv(max_seqlen_q, cfg.block_m), batch, num_heads)
    _prefill_kernel[grid](
        out, q, keys, values, cu_seqlens_q, cu_seqlens_k, table, scale * k_scale * LOG2E, v_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), kb, ks, kh, vb, vs, vh, stride_bt,
        GROUP=num_heads // num_kv_heads, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PAGED=paged, PAGE_SIZE=page_size,
        UPCAST=q.device.type == "cpu", **dependent_launch.launch_options(q.device),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
