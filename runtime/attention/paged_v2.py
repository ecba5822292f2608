"""PagedAttention v2 for decode: split-KV partitions of 512 tokens plus a reduce kernel.

The general decode path: any head size (padded to a power of two), any block size, any GQA
ratio, fp16/bf16/fp32 queries over a model-dtype or fp8 cache. One program computes one query
head of one sequence over one partition; when the longest context fits in one partition it
writes the output directly, else ``reduce_partitions`` merges the partial results.

The reduce kernel is shared with the custom paged kernel. Partial results are stored as
``tmp_out[b, h, p]`` (normalised, value-scaled), ``max_logits[b, h, p]`` (log2 domain) and
``exp_sums[b, h, p]``. Nothing here reads device tensors on the host: CUDA-graph safe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.0 / math.log(2.0)
PARTITION_SIZE = 512


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int
    num_warps: int
    num_stages: int


def default_config(device: torch.device) -> DecodeConfig:
    return DecodeConfig(16, 1, 1) if device.type == "cpu" else DecodeConfig(64, 2, 1)


@triton.jit
def _paged_v2_kernel(OUT, TMP_OUT, MAX_LOGITS, EXP_SUMS, Q, K_CACHE, V_CACHE, BLOCK_TABLES,
                     CONTEXT_LENS, qk_scale, v_scale, stride_qb, stride_qh, stride_ob, stride_oh,
                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                     GROUP: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                     PAGE_SIZE: tl.constexpr, PARTITION: tl.constexpr, BLOCK_N: tl.constexpr,
                     ONE_PARTITION: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    part = tl.program_id(2)
    num_parts = tl.num_programs(2)
    kv_head = head // GROUP
    context_len = tl.load(CONTEXT_LENS + seq)
    start = part * PARTITION
    if start >= tl.maximum(context_len, 1):  # partition 0 always runs: it writes zeros for length 0
        return
    end = tl.minimum(start + PARTITION, context_len)

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
    if ONE_PARTITION:
        tl.store(OUT + seq * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty),
                 mask=d_ok)
    else:
        row = (seq * tl.num_programs(1) + head) * num_parts + part
        tl.store(TMP_OUT + row * HEAD_PAD + offs_d, out)
        tl.store(MAX_LOGITS + row, m_i)
        tl.store(EXP_SUMS + row, l_i)


@triton.jit
def _reduce_kernel(OUT, TMP_OUT, MAX_LOGITS, EXP_SUMS, CONTEXT_LENS, stride_ob, stride_oh,
                   NUM_PARTS: tl.constexpr, HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                   PARTITION: tl.constexpr, CHUNK: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    context_len = tl.load(CONTEXT_LENS + seq)
    used = tl.cdiv(context_len, PARTITION)
    first = (seq * tl.num_programs(1) + head) * NUM_PARTS
    offs_p = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_PAD)
    m_vec = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
    for p0 in range(0, used, CHUNK):
        m_vec = tl.maximum(m_vec, tl.load(MAX_LOGITS + first + p0 + offs_p,
                                          mask=p0 + offs_p < used, other=float("-inf")))
    m = tl.max(m_vec, axis=0)
    acc = tl.zeros([CHUNK, HEAD_PAD], dtype=tl.float32)
    weight_sum = tl.zeros([CHUNK], dtype=tl.float32)
    for p0 in range(0, used, CHUNK):
        p_ok = p0 + offs_p < used
        logits = tl.load(MAX_LOGITS + first + p0 + offs_p, mask=p_ok, other=float("-inf"))
        sums = tl.load(EXP_SUMS + first + p0 + offs_p, mask=p_ok, other=0.0)
        weight = tl.where(p_ok, tl.math.exp2(logits - m) * sums, 0.0)
        part_out = tl.load(TMP_OUT + (first + p0 + offs_p)[:, None] * HEAD_PAD + offs_d[None, :],
                           mask=p_ok[:, None], other=0.0)
        acc += weight[:, None] * part_out
        weight_sum += weight
    total = tl.sum(weight_sum, axis=0)
    out = tl.sum(acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(OUT + seq * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty),
             mask=offs_d < HEAD_SIZE)


def partition_buffers(q: Tensor, num_parts: int, head_pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """``tmp_out`` [B, Hq, P, head_pad], ``max_logits`` and ``exp_sums`` [B, Hq, P], fp32."""
    batch, num_heads, _ = q.shape
    tmp_out = torch.empty(batch, num_heads, num_parts, head_pad, dtype=torch.float32,
                          device=q.device)
    max_logits = torch.empty(batch, num_heads, num_parts, dtype=torch.float32, device=q.device)
    return tmp_out, max_logits, torch.empty_like(max_logits)


def reduce_partitions(out: Tensor, tmp_out: Tensor, max_logits: Tensor, exp_sums: Tensor,
                      context_lens: Tensor, partition_size: int) -> None:
    """Merge the partial results of every partition of each (sequence, head) into ``out``."""
    batch, num_heads, head_size = out.shape
    num_parts, head_pad = tmp_out.shape[2], tmp_out.shape[3]
    _reduce_kernel[(batch, num_heads)](
        out, tmp_out, max_logits, exp_sums, context_lens, out.stride(0), out.stride(1),
        NUM_PARTS=num_parts, HEAD_SIZE=head_size, HEAD_PAD=head_pad, PARTITION=partition_size,
        CHUNK=min(16, triton.next_power_of_2(num_parts)), num_warps=4)


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
                       config: DecodeConfig | None = None) -> Tensor:
    """Decode attention, ``q`` [B, Hq, D] -> [B, Hq, D]; ``max_context_len`` bounds every
    context."""
    check_decode_inputs(q, k_cache, v_cache)
    batch, num_heads, head_size = q.shape
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    head_pad = triton.next_power_of_2(head_size)
    cfg = config or default_config(q.device)
    if partition_size % cfg.block_n:
        raise ValueError(f"partition size {partition_size} is not a multiple of {cfg.block_n}")
    num_parts = max(1, triton.cdiv(max_context_len, partition_size))
    out = torch.empty_like(q)
    if batch == 0:
        return out
    tmp_out, max_logits, exp_sums = (partition_buffers(q, num_parts, head_pad) if num_parts > 1
                                     else (out, out, out))
    _paged_v2_kernel[(batch, num_heads, num_parts)](
        out, tmp_out, max_logits, exp_sums, q, k_cache, v_cache, block_tables, context_lens,
        scale * k_scale * LOG2E, v_scale, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
        PAGE_SIZE=page_size, PARTITION=partition_size, BLOCK_N=cfg.block_n,
        ONE_PARTITION=num_parts == 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if num_parts > 1:
        reduce_partitions(out, tmp_out, max_logits, exp_sums, context_lens, partition_size)
    return out
