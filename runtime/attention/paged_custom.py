"""Custom paged attention for decode: one program per (sequence, KV head, partition).

The program computes every query head of the KV head's GQA group at once (the group's queries
padded to 16 rows feed ``tl.dot``), so each cache block is read once for the whole group instead
of once per query head. Partitions follow ``split_kv``: ``P`` per launch from the batch and the
device, each sequence's partition length from its own context (at least ``partition_size``
tokens), the last partition to finish merging the others; a graph captured at any
``max_model_len`` costs what its real contexts cost. The envelope it is chosen for (the ROCm
docs', with the context bound raised to the longest preset ``max_model_len``): fp16/bf16, block
size 16, head size 128, ``max_context_len`` <= 131072, GQA ratio 1-16; the kernel itself also
accepts other block sizes, power-of-two head sizes and any context. fp8 caches are upcast
in-kernel.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.attention.paged_v2 import DecodeConfig, check_decode_inputs
from solidx.runtime.attention.split_kv import (
    arrival_counters,
    arrive_last,
    merge_chunk,
    merge_partitions,
    num_splits,
    partition_len,
    split_buffers,
)

LOG2E = 1.0 / math.log(2.0)
PARTITION_SIZE = 256
"""The shortest partition: contexts up to this many tokens run in one program per KV head."""


def default_config(device: torch.device) -> DecodeConfig:
    return DecodeConfig(16, 1, 1) if device.type == "cpu" else DecodeConfig(64, 4, 2)


@triton.jit
def _paged_custom_kernel(OUT, TMP_OUT, MAX_LOGITS, EXP_SUMS, COUNTERS, Q, K_CACHE, V_CACHE,
                         BLOCK_TABLES, CONTEXT_LENS, qk_scale, v_scale, stride_qb, stride_qh,
                         stride_ob, stride_oh, stride_kb, stride_ks, stride_kh, stride_vb,
                         stride_vs, stride_vh, stride_bt,
                         GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, MERGE_PAD: tl.constexpr,
                         HEAD_SIZE: tl.constexpr, PAGE_SIZE: tl.constexpr,
                         PARTITION: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                         SPLIT: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    splits = tl.num_programs(2)
    context_len = tl.load(CONTEXT_LENS + seq)
    length = partition_len(context_len, splits, PARTITION, BLOCK_N)
    live = tl.cdiv(context_len, length)
    if part >= tl.maximum(live, 1):  # partition 0 always runs: it writes zeros for length 0
        return
    start = part * length
    end = tl.minimum(start + length, context_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_SIZE)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    q = tl.load(Q + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    table = BLOCK_TABLES + seq.to(tl.int64) * stride_bt
    k_base = K_CACHE + kv_head * stride_kh
    v_base = V_CACHE + kv_head * stride_vh

    acc = tl.zeros([GROUP_PAD, HEAD_SIZE], dtype=tl.float32)
    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    for n in range(start, end, BLOCK_N):
        pos = n + offs_n
        n_ok = pos < end
        block = tl.load(table + pos // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
        slot = pos % PAGE_SIZE
        kt = tl.load(k_base + (block * stride_kb + slot * stride_ks)[None, :] + offs_d[:, None],
                     mask=n_ok[None, :], other=0.0)
        v = tl.load(v_base + (block * stride_vb + slot * stride_vs)[:, None] + offs_d[None, :],
                    mask=n_ok[:, None], other=0.0)
        qk = tl.dot(q, kt.to(q.dtype)) * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    out = acc * (v_scale / tl.where(l_i > 0, l_i, 1.0))[:, None]
    out_ptrs = OUT + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    if SPLIT:
        if live > 1:
            first_row = seq * (num_kv_heads * GROUP) + kv_head * GROUP
            rows = (first_row + offs_g) * splits + part
            tl.store(TMP_OUT + rows[:, None] * HEAD_SIZE + offs_d[None, :], out,
                     mask=g_ok[:, None])
            tl.store(MAX_LOGITS + rows, m_i, mask=g_ok)
            tl.store(EXP_SUMS + rows, l_i, mask=g_ok)
            counter = COUNTERS + seq * num_kv_heads + kv_head
            if arrive_last(counter, live):
                merged = merge_partitions(TMP_OUT, MAX_LOGITS, EXP_SUMS, first_row, live,
                                          splits, GROUP, MERGE_PAD, CHUNK, HEAD_SIZE)
                offs_m = tl.arange(0, MERGE_PAD)
                tl.store(OUT + seq * stride_ob + (kv_head * GROUP + offs_m)[:, None] * stride_oh
                         + offs_d[None, :], merged.to(OUT.dtype.element_ty),
                         mask=(offs_m < GROUP)[:, None])
                tl.store(counter, 0)
        else:
            tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=g_ok[:, None])
    else:
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=g_ok[:, None])


def paged_attention_custom(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           context_lens: Tensor, max_context_len: int, scale: float,
                           k_scale: float = 1.0, v_scale: float = 1.0,
                           partition_size: int = PARTITION_SIZE,
                           config: DecodeConfig | None = None,
                           splits: int | None = None) -> Tensor:
    """Decode attention, ``q`` [B, Hq, D] -> [B, Hq, D]; ``max_context_len`` bounds every
    context. ``splits`` overrides ``split_kv.num_splits`` (partitions per launch)."""
    check_decode_inputs(q, k_cache, v_cache)
    batch, num_heads, head_size = q.shape
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if head_size < 16 or head_size & (head_size - 1):
        raise ValueError("custom paged attention needs a power-of-two head size >= 16,"
                         f" not {head_size}")
    cfg = config or default_config(q.device)
    if partition_size % cfg.block_n:
        raise ValueError(f"partition size {partition_size} is not a multiple of {cfg.block_n}")
    group = num_heads // num_kv_heads
    if splits is None:
        splits = num_splits(batch * num_kv_heads, max_context_len, partition_size, q.device)
    out = torch.empty_like(q)
    if batch == 0:
        return out
    if splits > 1:
        tmp_out, max_logits, exp_sums = split_buffers(q, splits, head_size)
        counters = arrival_counters(q.device, batch * num_kv_heads)
    else:
        tmp_out = max_logits = exp_sums = counters = out
    merge_pad = max(2, triton.next_power_of_2(group))
    _paged_custom_kernel[(batch, num_kv_heads, splits)](
        out, tmp_out, max_logits, exp_sums, counters, q, k_cache, v_cache, block_tables,
        context_lens, scale * k_scale * LOG2E, v_scale, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), MERGE_PAD=merge_pad,
        HEAD_SIZE=head_size, PAGE_SIZE=page_size, PARTITION=partition_size,
        BLOCK_N=cfg.block_n, CHUNK=merge_chunk(merge_pad, splits, cfg.num_warps), SPLIT=splits > 1,
        UPCAST=q.device.type == "cpu", **dependent_launch.launch_options(q.device),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
