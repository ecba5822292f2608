"""Split-K without a zeroing pass, and the epilogue every GEMM kernel shares.

With ``splitk > 1`` each program stores its fp32 partial tile in a workspace
(``part[s, n, m]``), then increments the tile's counter. The program that arrives last sums
the partials in split order (so the result does not depend on arrival order), applies the
scales and bias, writes ``y`` and resets the counter to zero for the next call. Counters start
at zero when the workspace is allocated, so no kernel ever has to clear anything first.

The workspace is allocated once per device and never freed (CUDA graphs keep its address).
Solutions on one device share it: run them on one stream at a time, as with cuBLAS's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.backends.base import WORKSPACE_BYTES
from solidx.gradlib.backends.triton_configs import MAX_TILES, partial_bytes

_WORKSPACES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_SM_COUNTS: dict[torch.device, int] = {}


def workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's ``(partials fp32[WORKSPACE_BYTES / 4], counters int32[MAX_TILES])``."""
    if device not in _WORKSPACES:
        parts = torch.empty(WORKSPACE_BYTES // 4, dtype=torch.float32, device=device)
        counters = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
        _WORKSPACES[device] = (parts, counters)
    return _WORKSPACES[device]


def launch_args(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None,
                scale_w: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor,
                block_n: int, block_m: int, block_k: int, splitk: int,
                ) -> tuple[tuple, dict[str, object], int]:
    """Arguments and constexprs shared by every GEMM kernel, and the number of work units
    (output tiles × splitk); the caller has checked shapes, strides and the workspace size.
    ``EVEN_K``: every split covers exactly ``k_per_split`` of K, so no load needs a K mask."""
    n, k = x.shape
    m = w.shape[0]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), splitk) * block_k
    parts, counters = workspace(x.device)
    args = (x, w, out, bias, scale_x, scale_w, parts[: max(partial_bytes(splitk, n, m) // 4, 1)],
            counters[:tiles], m, n, k, x.stride(0), w.stride(0), out.stride(0), k_per_split,
            splitk)
    consts = {"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_K": block_k,
              "EVEN_K": k_per_split * splitk == k, "HAS_BIAS": bias is not None,
              "HAS_SCALE": scale_x is not None, "SPLIT": splitk > 1}
    return args, consts, tiles * splitk


def persistent_grid(device: torch.device, units: int, progs: int) -> int:
    """Programs for ``units`` work units: one each (``progs == 0``), else ``progs`` per SM
    (the interpreter stands in for a 4-SM GPU)."""
    if progs == 0:
        return units
    if device.type != "cuda":
        return min(units, 4 * progs)
    if device not in _SM_COUNTS:
        _SM_COUNTS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return min(units, _SM_COUNTS[device] * progs)


@triton.jit
def _write_y(acc, offs_n, offs_m, mask, y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr, M,
             HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr):
    if HAS_SCALE:
        acc = acc * (tl.load(sx_ptr) * tl.load(sw_ptr))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
    y_ptrs = y_ptr + offs_n * stride_yn + offs_m
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_tile(acc, offs_n, offs_m, tile, pid_k, splitk, y_ptr, stride_yn, bias_ptr, sx_ptr,
               sw_ptr, part_ptr, count_ptr, M, N, HAS_BIAS: tl.constexpr,
               HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr):
    """Finish one output tile. ``offs_n``/``offs_m`` are the tile's token and feature indices,
    shaped to broadcast to ``acc`` (``[BN, 1]``/``[1, BM]`` or transposed)."""
    mask = (offs_n < N) & (offs_m < M)
    if SPLIT:
        offs_nm = offs_n * M + offs_m
        tl.store(part_ptr + pid_k * M * N + offs_nm, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == splitk - 1:
            total = tl.zeros_like(acc)
            if acc.numel <= 4096:  # small tiles: four partials in flight, summed in order
                for s in range(0, splitk, 4):
                    p_ptrs = part_ptr + s * M * N + offs_nm
                    p0 = tl.load(p_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
                    p1 = tl.load(p_ptrs + M * N, mask=mask & (s + 1 < splitk), other=0.0,
                                 cache_modifier=".cg")
                    p2 = tl.load(p_ptrs + 2 * M * N, mask=mask & (s + 2 < splitk), other=0.0,
                                 cache_modifier=".cg")
                    p3 = tl.load(p_ptrs + 3 * M * N, mask=mask & (s + 3 < splitk), other=0.0,
                                 cache_modifier=".cg")
                    total = (((total + p0) + p1) + p2) + p3
            else:  # large tiles: one at a time, or the registers spill
                for s in range(splitk):
                    total += tl.load(part_ptr + s * M * N + offs_nm, mask=mask, other=0.0,
                                     cache_modifier=".cg")
            _write_y(total, offs_n, offs_m, mask, y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr,
                     M, HAS_BIAS, HAS_SCALE)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")
    else:
        _write_y(acc, offs_n, offs_m, mask, y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr, M,
                 HAS_BIAS, HAS_SCALE)
