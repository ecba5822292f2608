"""Skinny GEMMs for decode (few tokens): the weight is read once, split along K and M so that
every SM streams it.

``y[N, M] = (x[N, K]·sx) @ (w[M, K]·sw)ᵀ + bias`` with fp32 accumulation. Two kernels:

* ``gemv`` (N ≤ 8, fastest at N = 1): no tensor cores. Each program loads
  ``[BLOCK_M, BLOCK_K]`` weight tiles as 16-byte vectors, multiplies them with every token
  row in fp32 registers and sums each vector in-thread; the cross-thread reduction over K
  happens once, after the loop. Few registers, so many programs per SM keep many loads in
  flight.
* ``skinny`` (N ≤ 32): swap-AB ``tl.dot``. The weight tile is the MMA's M side
  (``BLOCK_M`` ≥ 64 for wgmma), the tokens its N side padded to ``BLOCK_N`` (16 or 32; the
  padding rows are masked, so they cost no traffic); weight tiles stream through shared
  memory in ``num_stages`` asynchronous copies. fp8 products are promoted to the fp32
  accumulator every ``ACC_K`` elements of K (Hopper's fp8 MMA accumulates imprecisely).

Weight row indices wrap (``% M``) so that weight loads never need a row mask; wrapped rows
are dropped at the store. Split-K goes through :func:`store_tile`.

``stream=True`` (the ``stream``/``streamdot`` tuner kernels, after ROCm's ``wvSplitK``): a
persistent grid (``progs`` programs per SM) without split-K, each program owning whole output
rows and reducing all of K in registers; weight tiles load with ``evict_first`` (read once,
never worth caching), the activations, read by every program, with ``evict_last``.

Both launch while the kernel before them ends where programmatic dependent launch is on
(:mod:`dependent_launch`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.gradlib.kernels.splitk import launch_args, persistent_grid, store_tile


@triton.jit(do_not_specialize=["N", "splitk"])
def gemv_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr,
                M, N, K, stride_xn, stride_wm, stride_yn, k_per_split, splitk,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                SPLIT: tl.constexpr, VEC: tl.constexpr, W_POLICY: tl.constexpr,
                X_POLICY: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    tiles = tl.cdiv(M, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    # K as [BLOCK_K // VEC, VEC]: one 16-byte vector per (row, k // VEC), summed in-thread
    offs_k = (tl.arange(0, BLOCK_K // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :])
    for unit in range(tl.program_id(0), tiles * splitk, tl.num_programs(0)):
        tile = unit % tiles
        split = unit // tiles
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        k_lo = split * k_per_split
        k4 = (k_lo + offs_k)[None, None, :, :]
        w_ptrs = w_ptr + (offs_m % M)[None, :, None, None] * stride_wm + k4  # [1, BM, BK/V, V]
        x_ptrs = x_ptr + (offs_n % N)[:, None, None, None] * stride_xn + k4  # [BN, 1, BK/V, V]
        acc = tl.zeros((BLOCK_N, BLOCK_M, BLOCK_K // VEC), dtype=tl.float32)
        for k in range(k_lo, k_lo + k_per_split, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs, eviction_policy=W_POLICY)
                x = tl.load(x_ptrs, eviction_policy=X_POLICY)
            else:
                in_k = (k + offs_k)[None, None, :, :] < K
                w = tl.load(w_ptrs, mask=in_k, other=0.0, eviction_policy=W_POLICY)
                x = tl.load(x_ptrs, mask=in_k, other=0.0, eviction_policy=X_POLICY)
            acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=3)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        store_tile(tl.sum(acc, axis=2), offs_n[:, None], offs_m[None, :], tile, split, splitk,
                   y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr, M, N,
                   HAS_BIAS, HAS_SCALE, SPLIT)


@triton.jit(do_not_specialize=["N", "splitk"])
def skinny_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr,
                  M, N, K, stride_xn, stride_wm, stride_yn, k_per_split, splitk,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                  SPLIT: tl.constexpr, UPCAST: tl.constexpr, ACC_K: tl.constexpr,
                  W_POLICY: tl.constexpr, X_POLICY: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    tiles = tl.cdiv(M, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    in_n = (offs_n < N)[None, :]
    for unit in range(tl.program_id(0), tiles * splitk, tl.num_programs(0)):
        tile = unit % tiles
        split = unit // tiles
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        k_lo = split * k_per_split
        w_ptrs = w_ptr + (offs_m % M)[:, None] * stride_wm + (k_lo + offs_k)[None, :]  # [BM, BK]
        xt_ptrs = x_ptr + offs_n[None, :] * stride_xn + (k_lo + offs_k)[:, None]  # [BK, BN]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_lo, k_lo + k_per_split, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs, eviction_policy=W_POLICY)
                xt = tl.load(xt_ptrs, mask=in_n, other=0.0, eviction_policy=X_POLICY)
            else:
                in_k = (k + offs_k) < K
                w = tl.load(w_ptrs, mask=in_k[None, :], other=0.0, eviction_policy=W_POLICY)
                xt = tl.load(xt_ptrs, mask=in_k[:, None] & in_n, other=0.0,
                             eviction_policy=X_POLICY)
            if UPCAST:
                acc += tl.dot(w.to(tl.float32), xt.to(tl.float32))
            else:
                acc = tl.dot(w, xt, acc, max_num_imprecise_acc=ACC_K)
            w_ptrs += BLOCK_K
            xt_ptrs += BLOCK_K
        store_tile(acc, offs_n[None, :], offs_m[:, None], tile, split, splitk, y_ptr,
                   stride_yn, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr, M, N,
                   HAS_BIAS, HAS_SCALE, SPLIT)


def _policies(stream: bool) -> dict[str, str]:
    """The weight and activation loads' eviction policies (``stream``: see the module doc)."""
    return ({"W_POLICY": "evict_first", "X_POLICY": "evict_last"} if stream
            else {"W_POLICY": "", "X_POLICY": ""})


def gemv(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None,
         scale_w: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor, *,
         block_n: int, block_m: int, block_k: int, splitk: int, progs: int,
         num_warps: int, stream: bool = False) -> torch.Tensor:
    """``out[N, M] = (x·sx) @ (w·sw)ᵀ + bias`` with :func:`gemv_kernel`; needs N ≤ block_n.
    ``progs`` programs per SM loop over the work units (0: one program per unit)."""
    args, consts, units = launch_args(x, w, scale_x, scale_w, bias, out, block_n, block_m,
                                      block_k, splitk)
    grid = (persistent_grid(x.device, units, progs),)
    gemv_kernel[grid](*args, **consts, VEC=16 // w.element_size(), **_policies(stream),
                      **dependent_launch.launch_options(x.device), num_warps=num_warps,
                      num_stages=1)
    return out


def skinny(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None,
           scale_w: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor, *,
           block_n: int, block_m: int, block_k: int, splitk: int, progs: int, num_warps: int,
           num_stages: int, stream: bool = False) -> torch.Tensor:
    """``out[N, M] = (x·sx) @ (w·sw)ᵀ + bias`` with :func:`skinny_kernel`; needs N ≤ block_n.
    ``progs`` programs per SM loop over the work units (0: one program per unit)."""
    args, consts, units = launch_args(x, w, scale_x, scale_w, bias, out, block_n, block_m,
                                      block_k, splitk)
    grid = (persistent_grid(x.device, units, progs),)
    skinny_kernel[grid](*args, **consts, UPCAST=x.device.type == "cpu",
                        ACC_K=min(block_k, 256), **_policies(stream),
                        **dependent_launch.launch_options(x.device), num_warps=num_warps,
                        num_stages=num_stages)
    return out
