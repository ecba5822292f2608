"""Writing new keys and values into the paged KV cache, in Triton (CUDA-graph safe); the fused
rotary kernel (``runtime.layers.fused.rotary``) writes them as ``kv_cache_value`` says too.

Token ``t`` goes to slot ``slot_mapping[t]`` (``block * block_size + offset``); slot -1 (padding
of a CUDA-graph batch) is skipped inside the kernel, so the host never inspects the mapping.
An fp8 cache stores ``value / scale``, saturated to the fp8 range.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.attention.reference import FP8_E4M3_MAX
from solidx.runtime.quantization.input_quant import round_to_e4m3


@triton.jit
def kv_cache_value(x, scale, FP8: tl.constexpr, FP8_MAX: tl.constexpr):
    """What the cache stores for ``x`` (float32): ``x / scale`` saturated and rounded to e4m3fn
    for an fp8 cache, else ``x`` (cast it to the cache dtype to store)."""
    if FP8:
        x = round_to_e4m3(tl.clamp(x / scale, -FP8_MAX, FP8_MAX), -6)
    return x


@triton.jit
def _store_kernel(K, V, K_CACHE, V_CACHE, SLOT_MAPPING, k_scale, v_scale,
                  stride_kt, stride_kh, stride_vt, stride_vh,
                  stride_kb, stride_ks, stride_kh_cache, stride_vb, stride_vs, stride_vh_cache,
                  HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, PAGE_SIZE: tl.constexpr,
                  FP8: tl.constexpr, FP8_MAX: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(SLOT_MAPPING + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    offs_d = tl.arange(0, HEAD_PAD)
    d_ok = offs_d < HEAD_SIZE
    k = tl.load(K + token * stride_kt + head * stride_kh + offs_d, mask=d_ok).to(tl.float32)
    v = tl.load(V + token * stride_vt + head * stride_vh + offs_d, mask=d_ok).to(tl.float32)
    k = kv_cache_value(k, k_scale, FP8, FP8_MAX)
    v = kv_cache_value(v, v_scale, FP8, FP8_MAX)
    tl.store(K_CACHE + block * stride_kb + offset * stride_ks + head * stride_kh_cache + offs_d,
             k.to(K_CACHE.dtype.element_ty), mask=d_ok)
    tl.store(V_CACHE + block * stride_vb + offset * stride_vs + head * stride_vh_cache + offs_d,
             v.to(V_CACHE.dtype.element_ty), mask=d_ok)


def store_kvcache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                  k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Write ``k``/``v`` ([T, Hkv, D]) at ``slot_mapping`` ([T] int32, -1 skips) into the caches."""
    num_tokens, num_kv_heads, head_size = k.shape
    if k_cache.shape[2:] != (num_kv_heads, head_size) or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shape {tuple(k_cache.shape)} does not hold keys {tuple(k.shape)}")
    if k.stride(-1) != 1 or v.stride(-1) != 1 or k_cache.stride(-1) != 1:
        raise ValueError("keys, values and the cache must be contiguous in the head dimension")
    if num_tokens == 0:
        return
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    _store_kernel[(num_tokens, num_kv_heads)](
        k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_SIZE=head_size, HEAD_PAD=triton.next_power_of_2(head_size),
        PAGE_SIZE=k_cache.shape[1], FP8=fp8, FP8_MAX=FP8_E4M3_MAX,
        **dependent_launch.launch_options(k.device), num_warps=1)
