"""Split-KV decode: how many partitions a launch has, where they meet, and how they merge.

Both paged decode kernels give every (sequence, head) row at most ``P`` partitions, ``P`` chosen
on the host by :func:`num_splits` from the number of rows, the device's SM count and a cap
from ``max_context_len``; a CUDA graph captured at any ``max_model_len`` therefore launches the
same grid and the same buffers as one captured at 4096. Each program computes its sequence's
partition length from that sequence's context length (:func:`partition_len`), so a sequence
has ``cdiv(context_len, partition_len) <= P`` live partitions and programs past them exit at
once.

A row with one live partition writes its output directly. A row with more stores its partial
results (:func:`split_buffers`), then counts its arrival in an int32 counter
(:func:`arrival_counters`); the last partition to arrive merges the row's live partitions
(:func:`merge_partitions`) and resets the counter to zero, so no reduce kernel is launched.
Counters are zero between launches; launches on one device must be ordered on one stream, as
the runtime's are. Nothing here reads a device tensor on the host: CUDA-graph safe.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

PROGRAMS_PER_SM = 4
"""Programs a launch aims for per SM (before early exits): rows x P >= SMs x this."""
MAX_SPLITS = 128
CPU_SM_COUNT = 4
"""The "SM count" off CUDA (Triton's interpreter): few programs, short tests."""
MERGE_ROWS_PER_WARP = 16
"""Partial results one merge step loads at once: heads x partitions <= this x warps."""

_COUNTERS: dict[torch.device, list[Tensor]] = {}


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (:data:`CPU_SM_COUNT` off CUDA)."""
    if device.type != "cuda":
        return CPU_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_splits(rows: int, max_context_len: int, min_partition: int,
               device: torch.device) -> int:
    """``P`` for a launch over ``rows`` (sequence, head) rows: enough programs to fill the
    device, at most :data:`MAX_SPLITS` and at most the partitions of ``min_partition`` tokens
    that ``max_context_len`` can hold (so an eager step at short contexts launches few)."""
    wanted = triton.cdiv(sm_count(device) * PROGRAMS_PER_SM, max(rows, 1))
    return max(1, min(wanted, MAX_SPLITS, triton.cdiv(max_context_len, min_partition)))


def split_buffers(q: Tensor, splits: int, head_pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """``tmp_out`` [B, Hq, P, head_pad] (normalised, value-scaled), ``max_logits`` (log2
    domain) and ``exp_sums`` [B, Hq, P], fp32: partition ``p`` of row (b, h) at ``[b, h, p]``."""
    batch, num_heads, _ = q.shape
    tmp_out = torch.empty(batch, num_heads, splits, head_pad, dtype=torch.float32,
                          device=q.device)
    max_logits = torch.empty(batch, num_heads, splits, dtype=torch.float32, device=q.device)
    return tmp_out, max_logits, torch.empty_like(max_logits)


def arrival_counters(device: torch.device, rows: int) -> Tensor:
    """At least ``rows`` int32 zeros on ``device`` that the kernels count arrivals in and leave
    at zero. Made on first use and grown outside CUDA-graph capture only; buffers a graph may
    have captured are kept. Raises RuntimeError when a capture would need a larger one (run
    the call once eagerly at that batch size first, as the decode graphs' warm-up does)."""
    held = _COUNTERS.setdefault(device, [])
    if held and held[-1].numel() >= rows:
        return held[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"decode attention needs {rows} arrival counters on {device} inside a "
                           "CUDA-graph capture; run it once outside the capture at this batch "
                           "size first")
    held.append(torch.zeros(max(rows, 1024), dtype=torch.int32, device=device))
    return held[-1]


@triton.jit
def partition_len(context_len, splits, MIN_PARTITION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tokens per partition of a sequence of ``context_len``: its share of ``splits``
    partitions rounded up to ``BLOCK_N``, at least ``MIN_PARTITION``."""
    share = tl.cdiv(tl.cdiv(context_len, splits), BLOCK_N) * BLOCK_N
    return tl.maximum(share, MIN_PARTITION)


@triton.jit
def arrive_last(COUNTER, live):
    """Count this program's arrival at its row's counter; True for the last of ``live``.

    The barrier puts every thread's partial-result stores before the release of the atomic;
    its acquire (and the barrier that shares its result) puts the merge's loads after the
    other partitions' stores.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(COUNTER, 1, sem="acq_rel", scope="gpu")
    return arrived == live - 1


@triton.jit
def merge_partitions(TMP_OUT, MAX_LOGITS, EXP_SUMS, first_row, live, splits,
                     HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, CHUNK: tl.constexpr,
                     HEAD_PAD: tl.constexpr):
    """The merged output [HEADS_PAD, HEAD_PAD] (fp32) of the ``HEADS`` consecutive rows from
    ``first_row`` (= b * Hq + h), over their first ``live`` partitions; rows past ``HEADS``
    are zero. Loads bypass L1: other SMs wrote the partial results during this launch."""
    offs_h = tl.arange(0, HEADS_PAD)
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_PAD)
    base = (first_row + offs_h) * splits
    m_run = tl.full([HEADS_PAD], float("-inf"), dtype=tl.float32)
    total = tl.zeros([HEADS_PAD], dtype=tl.float32)
    acc = tl.zeros([HEADS_PAD, HEAD_PAD], dtype=tl.float32)
    for p0 in range(0, live, CHUNK):
        ok = (offs_h < HEADS)[:, None] & (p0 + offs_c < live)[None, :]
        idx = base[:, None] + p0 + offs_c[None, :]
        m = tl.load(MAX_LOGITS + idx, mask=ok, other=float("-inf"), cache_modifier=".cg")
        s = tl.load(EXP_SUMS + idx, mask=ok, other=0.0, cache_modifier=".cg")
        o = tl.load(TMP_OUT + idx[:, :, None] * HEAD_PAD + offs_d[None, None, :],
                    mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_run, tl.max(m, axis=1))
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # padding rows see no partition
        alpha = tl.math.exp2(m_run - m_ref)
        weight = tl.math.exp2(m - m_ref[:, None]) * s
        acc = acc * alpha[:, None] + tl.sum(weight[:, :, None] * o, axis=1)
        total = total * alpha + tl.sum(weight, axis=1)
        m_run = m_new
    return acc / tl.where(total > 0, total, 1.0)[:, None]


def merge_chunk(heads_pad: int, splits: int, num_warps: int) -> int:
    """Partitions one merge step of a program of ``num_warps`` loads per row
    (:data:`MERGE_ROWS_PER_WARP`)."""
    rows = MERGE_ROWS_PER_WARP * num_warps
    return max(1, min(triton.next_power_of_2(splits), rows // heads_pad))
