"""Streaming skinny GEMMs for decode (N ≤ 16): the weight read once, at the read floor.

``y[N, M] = (x[N, K]·sx) @ (w[M, K]·sw)ᵀ + bias`` with fp32 accumulation, in the manner of
ROCm's ``wvSplitK``/``wvSplitKQ`` (written for Triton, so the same code serves CUDA and ROCm):

* a persistent grid: ``progs`` programs per SM (at most one per row block), each looping over
  row blocks ``pid, pid + P, ...``;
* each program owns whole output rows (``BLOCK_M`` of them, several rows in flight) and reduces
  the full K in registers: no split-K, no second pass, no atomics, no workspace to zero;
* weight tiles stream with 16-byte loads marked ``evict_first`` (read once, never worth
  caching); the activations, read by every program, are marked ``evict_last`` so that after
  the first program they come from cache.

Two kernels share that plan and differ in the multiply:

* ``stream_kernel`` (N ≤ 8): FMAs in fp32, no tensor cores. K is viewed as
  ``[BLOCK_K // VEC, VEC]`` 16-byte vectors, each summed in-thread; the cross-thread sum over
  K happens once, after the loop.
* ``stream_dot_kernel`` (N ≤ 16): ``tl.dot`` of the ``[BLOCK_M, BLOCK_K]`` weight tile with the
  transposed activations padded to ``BLOCK_N`` = 16 tokens (padding rows are masked: no
  traffic); fp8 products are promoted to fp32 every ``ACC_K`` elements of K.

Weight row indices wrap (``% M``) so weight loads need no row mask; wrapped rows are not stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels.splitk import persistent_grid


@triton.jit
def _finish(acc, offs_n, offs_m, y_ptr, stride_yn, bias_ptr, sx_ptr, sw_ptr, M, N,
            HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr):
    """Scale, add the bias and store one block of rows (``offs_n``/``offs_m`` broadcast to
    ``acc``'s shape)."""
    if HAS_SCALE:
        acc = acc * (tl.load(sx_ptr) * tl.load(sw_ptr))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
    mask = (offs_n < N) & (offs_m < M)
    tl.store(y_ptr + offs_n * stride_yn + offs_m, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N"])
def stream_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, sx_ptr, sw_ptr, M, N, K,
                  stride_xn, stride_wm, stride_yn,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  VEC: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_SCALE: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    k4 = offs_k[None, None, :, :]  # [1, 1, BK/V, V]
    x_base = x_ptr + (offs_n % N)[:, None, None, None] * stride_xn + k4  # [BN, 1, BK/V, V]
    for tile in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        w_ptrs = w_ptr + (offs_m % M)[None, :, None, None] * stride_wm + k4  # [1, BM, BK/V, V]
        x_ptrs = x_base
        acc = tl.zeros((BLOCK_N, BLOCK_M, BLOCK_K // VEC), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
                x = tl.load(x_ptrs, eviction_policy="evict_last")
            else:
                in_k = (k + k4) < K
                w = tl.load(w_ptrs, mask=in_k, other=0.0, eviction_policy="evict_first")
                x = tl.load(x_ptrs, mask=in_k, other=0.0, eviction_policy="evict_last")
            acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=3)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        _finish(tl.sum(acc, axis=2), offs_n[:, None], offs_m[None, :], y_ptr, stride_yn,
                bias_ptr, sx_ptr, sw_ptr, M, N, HAS_BIAS, HAS_SCALE)


@triton.jit(do_not_specialize=["N"])
def stream_dot_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, sx_ptr, sw_ptr, M, N, K,
                      stride_xn, stride_wm, stride_yn,
                      BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                      EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                      UPCAST: tl.constexpr, ACC_K: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    in_n = (offs_n < N)[None, :]
    xt_base = x_ptr + offs_n[None, :] * stride_xn + offs_k[:, None]  # [BK, BN]
    for tile in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        w_ptrs = w_ptr + (offs_m % M)[:, None] * stride_wm + offs_k[None, :]  # [BM, BK]
        xt_ptrs = xt_base
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
                xt = tl.load(xt_ptrs, mask=in_n, other=0.0, eviction_policy="evict_last")
            else:
                in_k = (k + offs_k) < K
                w = tl.load(w_ptrs, mask=in_k[None, :], other=0.0, eviction_policy="evict_first")
                xt = tl.load(xt_ptrs, mask=in_k[:, None] & in_n, other=0.0,
                             eviction_policy="evict_last")
            if UPCAST:
                acc += tl.dot(w.to(tl.float32), xt.to(tl.float32))
            else:
                acc = tl.dot(w, xt, acc, max_num_imprecise_acc=ACC_K)
            w_ptrs += BLOCK_K
            xt_ptrs += BLOCK_K
        _finish(acc, offs_n[None, :], offs_m[:, None], y_ptr, stride_yn, bias_ptr, sx_ptr,
                sw_ptr, M, N, HAS_BIAS, HAS_SCALE)


def stream(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None,
           scale_w: torch.Tensor | None, bias: torch.Tensor | None, out: torch.Tensor, *,
           dot: bool, block_n: int, block_m: int, block_k: int, progs: int, num_warps: int,
           num_stages: int) -> torch.Tensor:
    """``out[N, M] = (x·sx) @ (w·sw)ᵀ + bias`` with :func:`stream_dot_kernel` (``dot``) or
    :func:`stream_kernel`; needs N ≤ block_n, unit strides along K, ``progs`` ≥ 1 programs per
    SM (never more programs than row blocks)."""
    n, k = x.shape
    m = w.shape[0]
    grid = (persistent_grid(x.device, triton.cdiv(m, block_m), progs),)
    args = (x, w, out, bias, scale_x, scale_w, m, n, k, x.stride(0), w.stride(0), out.stride(0))
    consts = {"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_K": block_k,
              "EVEN_K": k % block_k == 0, "HAS_BIAS": bias is not None,
              "HAS_SCALE": scale_x is not None}
    if dot:
        stream_dot_kernel[grid](*args, **consts, UPCAST=x.device.type == "cpu",
                                ACC_K=min(block_k, 256), num_warps=num_warps,
                                num_stages=num_stages)
    else:
        stream_kernel[grid](*args, **consts, VEC=16 // w.element_size(), num_warps=num_warps,
                            num_stages=num_stages)
    return out
