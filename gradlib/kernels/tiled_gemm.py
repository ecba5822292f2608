"""Tiled GEMM for prefill and larger batches: ``y[N, M] = (x·sx) @ (w·sw)ᵀ + bias``.

Each program computes a ``[BLOCK_N, BLOCK_M]`` tile of ``y`` (tokens × features) with
``tl.dot`` and fp32 accumulation over its share of K (split-K through :func:`store_tile`).
Programs walk ``GROUP_M`` feature tiles down all token tiles before moving on, so a group's
weight tiles stay in L2 while the activations stream past them. It launches while the kernel
before it ends where programmatic dependent launch is on (:mod:`dependent_launch`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.gradlib.kernels.splitk import launch_args, store_tile


@triton.jit(do_not_specialize=["N", "splitk"])
def tiled_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr,
                 M, N, K, stride_xn, stride_wm, stride_yn, k_per_split, splitk,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                 SPLIT: tl.constexpr, UPCAST: tl.constexpr, ACC_K: tl.constexpr,
                 GROUP_M: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    x_ptrs = x_ptr + (offs_n % N)[:, None] * stride_xn + (k_lo + offs_k)[None, :]  # [BN, BK]
    wt_ptrs = w_ptr + (offs_m % M)[None, :] * stride_wm + (k_lo + offs_k)[:, None]  # [BK, BM]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            wt = tl.load(wt_ptrs)
        else:
            in_k = (k + offs_k) < K
            x = tl.load(x_ptrs, mask=in_k[None, :], other=0.0)
            wt = tl.load(wt_ptrs, mask=in_k[:, None], other=0.0)
        if UPCAST:
            acc += tl.dot(x.to(tl.float32), wt.to(tl.float32))
        else:
            acc = tl.dot(x, wt, acc, max_num_imprecise_acc=ACC_K)
        x_ptrs += BLOCK_K
        wt_ptrs += BLOCK_K
    store_tile(acc, offs_n[:, None], offs_m[None, :], pid, pid_k, splitk,
               y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr, part_ptr, count_ptr, M, N,
               HAS_BIAS, HAS_SCALE, SPLIT)


def tiled(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None,
          scale_w: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor, *,
          block_n: int, block_m: int, block_k: int, group_m: int, splitk: int, num_warps: int,
          num_stages: int) -> torch.Tensor:
    """``out[N, M] = (x·sx) @ (w·sw)ᵀ + bias`` with :func:`tiled_kernel`, any N."""
    args, consts, units = launch_args(x, w, scale_x, scale_w, bias, out, block_n, block_m,
                                      block_k, splitk)
    tiled_kernel[(units // splitk, splitk)](*args, **consts, UPCAST=x.device.type == "cpu",
                       ACC_K=min(block_k, 256), GROUP_M=group_m,
                       **dependent_launch.launch_options(x.device), num_warps=num_warps,
                       num_stages=num_stages)
    return out
