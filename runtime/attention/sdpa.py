"""Prefill through the framework's flash attention (``VLLM_USE_TRITON_FLASH_ATTN=0``).

``torch.nn.functional.scaled_dot_product_attention`` restricted to its flash backend, one sequence
at a time (SDPA has no variable-length entry). Keys from the paged cache are gathered into a
dense tensor first; queries shorter than their keys use a bottom-right causal mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from solidx.runtime.attention.reference import check_gqa, gather_kv


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """One sequence: q [Lq, Hq, D], k/v [Lk, Hkv, D] (Lk >= Lq) -> [Lq, Hq, D] with flash
    attention."""
    q_len, k_len = q.shape[0], k.shape[0]
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        if q_len == k_len:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale,
                                                 enable_gqa=True)
        else:
            # imported here: torch.nn.attention.bias imports torch._dynamo (seconds of every
            # engine's start-up) and only this branch needs it
            from torch.nn.attention.bias import causal_lower_right

            group = q.shape[1] // k.shape[1]
            kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
            out = F.scaled_dot_product_attention(qh, kh, vh, causal_lower_right(q_len, k_len),
                                                 scale=scale)
    return out[0].transpose(0, 1)


def prefill_attention(q: Tensor, k: Tensor | None, v: Tensor | None, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float,
                      k_cache: Tensor | None = None, v_cache: Tensor | None = None,
                      block_tables: Tensor | None = None,
                      k_scale: float = 1.0, v_scale: float = 1.0) -> Tensor:
    """Same contract as ``solidx.runtime.attention.prefill_attention`` (stated in the docstring of
    ``solidx.runtime.attention``)."""
    out = torch.empty_like(q)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cu_q) - 1):
        if cu_q[i + 1] == cu_q[i]:
            continue
        if block_tables is None:
            k_i, v_i = k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        else:
            k_len = cu_k[i + 1] - cu_k[i]
            k_i = gather_kv(k_cache, block_tables[i], k_len, k_scale).to(q.dtype)
            v_i = gather_kv(v_cache, block_tables[i], k_len, v_scale).to(q.dtype)
        check_gqa(q.shape[1], k_i.shape[1])
        out[cu_q[i]:cu_q[i + 1]] = attend(q[cu_q[i]:cu_q[i + 1]], k_i, v_i, scale)
    return out
