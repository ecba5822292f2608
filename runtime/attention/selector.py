"""Which attention implementation runs: chosen per call from the device, the shapes and
``runtime.envs``.

CPU tensors use the torch reference. On a GPU, prefill runs solidx's Triton flash kernel, or the
framework's flash attention (SDPA) when ``VLLM_USE_TRITON_FLASH_ATTN`` is off; decode runs the
custom paged kernel where its envelope holds (fp16/bf16, block 16, head 128,
``max_context_len`` <= 131072, GQA ratio 1-16) and ``VLLM_USE_ROCM_CUSTOM_PAGED_ATTN`` is on, else
PagedAttention v2.
Each choice is counted in ``KERNEL_COUNTS`` and logged at DEBUG the first time it is made.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import Tensor

from solidx.runtime import envs
from solidx.runtime.attention import reference, sdpa
from solidx.runtime.attention.paged_custom import paged_attention_custom
from solidx.runtime.attention.paged_v2 import paged_attention_v2
from solidx.runtime.attention.triton_prefill import prefill_attention as prefill_triton
from solidx.runtime.attention.triton_store import store_kvcache as store_triton

logger = logging.getLogger(__name__)

KERNEL_COUNTS: Counter[str] = Counter()

CUSTOM_BLOCK_SIZE = 16
CUSTOM_HEAD_SIZE = 128
CUSTOM_MAX_CONTEXT_LEN = 131072
"""The largest ``max_context_len`` (under CUDA graphs: ``max_model_len``) the custom kernel is
chosen for, the longest preset's; its grid and buffers do not grow with it (``split_kv``)."""
CUSTOM_MAX_GQA_RATIO = 16


def _ran(kernel: str) -> None:
    if kernel not in KERNEL_COUNTS:
        logger.debug("attention: using %s", kernel)
    KERNEL_COUNTS[kernel] += 1


def custom_paged_applies(q: Tensor, k_cache: Tensor, max_context_len: int) -> bool:
    """Whether the custom paged decode kernel is chosen for this call (the ROCm docs' envelope,
    the context bound raised to :data:`CUSTOM_MAX_CONTEXT_LEN`)."""
    _, block_size, num_kv_heads, head_size = k_cache.shape
    ratio = q.shape[1] // num_kv_heads
    return (q.dtype in (torch.float16, torch.bfloat16) and block_size == CUSTOM_BLOCK_SIZE
            and head_size == CUSTOM_HEAD_SIZE and max_context_len <= CUSTOM_MAX_CONTEXT_LEN
            and 1 <= ratio <= CUSTOM_MAX_GQA_RATIO)


def store_kvcache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                  k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Write ``k``/``v`` ([T, Hkv, D]) into the paged cache at ``slot_mapping`` (-1 skips a
    token)."""
    if k.device.type == "cpu":
        _ran("store_reference")
        reference.store_kvcache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
        return
    _ran("store_triton")
    store_triton(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, scale: float,
                      k_cache: Tensor | None = None, v_cache: Tensor | None = None,
                      block_tables: Tensor | None = None,
                      k_scale: float = 1.0, v_scale: float = 1.0) -> Tensor:
    """Varlen causal GQA prefill; the contract is in ``solidx.runtime.attention``'s docstring."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
            k_cache, v_cache, block_tables, k_scale, v_scale)
    if q.device.type == "cpu":
        _ran("prefill_reference")
        return reference.prefill_attention(*args)
    if envs.VLLM_USE_TRITON_FLASH_ATTN:
        _ran("prefill_triton")
        return prefill_triton(*args)
    _ran("prefill_sdpa_flash")
    return sdpa.prefill_attention(*args)


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                     context_lens: Tensor, max_context_len: int, scale: float,
                     k_scale: float = 1.0, v_scale: float = 1.0) -> Tensor:
    """One query token per sequence over the paged cache; context length 0 gives zeros.

    ``max_context_len`` is a host-side upper bound (fixed at CUDA-graph capture).
    """
    args = (q, k_cache, v_cache, block_tables, context_lens, max_context_len, scale,
            k_scale, v_scale)
    if q.device.type == "cpu":
        _ran("decode_reference")
        return reference.decode_attention(*args)
    if envs.VLLM_USE_ROCM_CUSTOM_PAGED_ATTN and custom_paged_applies(q, k_cache, max_context_len):
        _ran("paged_custom")
        return paged_attention_custom(*args)
    _ran("paged_v2")
    return paged_attention_v2(*args)
