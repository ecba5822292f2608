"""PagedAttention v2 for decode: split-KV partitions of at least 512 tokens, merged in-kernel.

The general decode path: any head size (padded to a power of two), any block size, any GQA
ratio, fp16/bf16/fp32 queries over a model-dtype or fp8 cache. One program computes one query
head of one sequence over one partition. Partitions follow ``split_kv``: ``P`` per launch from
the batch and the device, each sequence's partition length from its own context, a row with
one live partition written directly and one with more merged by its last partition to finish;
so a CUDA graph captured at any ``max_model_len`` costs what its real contexts cost. Nothing
here reads device tensors on the host: CUDA-graph safe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from solidx.gradlib.kernels import dependent_launch
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
PARTITION_SIZE = 512
"""The shortest partition: contexts up to this many tokens run in one program per head."""


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int
    num_warps: int
    num_stages: int


def default_config(device: torch.device) -> DecodeConfig:
    return DecodeConfig(16, 1, 1) if device.type == "cpu" else DecodeConfig(64, 2, 1)


@triton.jit
def _paged_v2_kernel(OUT, TMP_OUT, MAX_LOGITS, EXP_SUMS, COUNTERS, Q, K_CACHE, V_CACHE,
                     BLOCK_TABLES, CONTEXT_LENS, qk_scale, v_scale, stride_qb, stride_qh,
                     stride_ob, stride_oh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                     stride_vh, stride_bt,
                     GROUP: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                     PAGE_SIZE: tl.constexpr, PARTITION: tl.constexpr, BLOCK_N: tl.constexpr,
                     CHUNK: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    part = tl.program_id(2)
    splits = tl.num_programs(2)
    kv_head = head // GROUP
    context_len = tl.load(CONTEXT_LENS + seq)
    length = partition_len(context_len, splits, PARTITION, BLOCK_N)
    live = tl.cdiv(context_len, length)
    if part >= tl.maximum(live, 1):  # partition 0 always runs: it writes zeros for length 0
        return
    start = part * length
    end = tl.minimum(start + length, context_len)

    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_SIZE
    q = tl.load(Q + seq * stride_qb + head * stride_qh + offs_d, mask=d_ok,
                other=0.0).to(tl.float32)
    table = BLOCK_TABLES + seq.to(tl.int64) * stride_bt

    acc = tl.zeros([HEAD_PAD], dtype=tl.float32)
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), dtype=tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BLOCK_N], dtype=tl.float32), axis=0)
    for n in range(start, end, BLOCK_N):
        pos = n + offs_n
        n_ok = pos < end
        block = tl.load(table + pos // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
        slot = pos % PAGE_SIZE
        mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K_CACHE + (block * stride_kb + slot * stride_ks + kv_head * stride_kh)[:, None]
                    + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        qk = tl.sum(q[None, :] * k, axis=1) * qk_scale
        qk = tl.where(n_ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=0))
        p = tl.math.exp2(qk - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        v = tl.load(V_CACHE + (block * stride_vb + slot * stride_vs + kv_head * stride_vh)[:, None]
                    + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    out = acc * (v_scale / tl.where(l_i > 0, l_i, 1.0))
    out_ptrs = OUT + seq * stride_ob + head * stride_oh + offs_d
    if SPLIT:
        if live > 1:
            first_row = seq * tl.num_programs(1) + head
            row = first_row * splits + part
            tl.store(TMP_OUT + row * HEAD_PAD + offs_d, out)
            tl.store(MAX_LOGITS + row, m_i)
            tl.store(EXP_SUMS + row, l_i)
            counter = COUNTERS + first_row
            if arrive_last(counter, live):
                merged = merge_partitions(TMP_OUT, MAX_LOGITS, EXP_SUMS, first_row, live,
                                          splits, 1, 2, CHUNK, HEAD_PAD)
                merged = tl.sum(merged, axis=0)  # its second row is padding: zeros
                tl.store(out_ptrs, merged.to(OUT.dtype.element_ty), mask=d_ok)
                tl.store(counter, 0)
        else:
            tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=d_ok)
    else:
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=d_ok)


def check_decode_inputs(q: Tensor, k_cache: Tensor, v_cache: Tensor) -> None:
    num_kv_heads = k_cache.shape[2]
    if num_kv_heads == 0 or q.shape[1] % num_kv_heads:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of KV heads"
                         f" ({num_kv_heads})")
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != q.shape[2]:
        raise ValueError(f"cache shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit "
                         f"queries {tuple(q.shape)}")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise ValueError("attention tensors must be contiguous in the head dimension")


def paged_attention_v2(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
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
    head_pad = triton.next_power_of_2(head_size)
    cfg = config or default_config(q.device)
    if partition_size % cfg.block_n:
        raise ValueError(f"partition size {partition_size} is not a multiple of {cfg.block_n}")
    if splits is None:
        splits = num_splits(batch * num_heads, max_context_len, partition_size, q.device)
    out = torch.empty_like(q)
    if batch == 0:
        return out
    if splits > 1:
        tmp_out, max_logits, exp_sums = split_buffers(q, splits, head_pad)
        counters = arrival_counters(q.device, batch * num_heads)
    else:
        tmp_out = max_logits = exp_sums = counters = out
    _paged_v2_kernel[(batch, num_heads, splits)](
        out, tmp_out, max_logits, exp_sums, counters, q, k_cache, v_cache, block_tables,
        context_lens, scale * k_scale * LOG2E, v_scale, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
        PAGE_SIZE=page_size, PARTITION=partition_size, BLOCK_N=cfg.block_n,
        CHUNK=merge_chunk(2, splits, cfg.num_warps), SPLIT=splits > 1,
        **dependent_launch.launch_options(q.device), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return out
