"""The attention layer: rotates this step's queries and keys, writes the keys and values to its
paged cache view, then attends through ``runtime.attention`` (which picks the kernel for the
device). On CUDA one Triton kernel does the rotary and the cache write."""

from __future__ import annotations

import torch
from torch import nn

from solidx.runtime import attention as ops
from solidx.runtime.context import get_forward_context
from solidx.runtime.layers.fused import use_fusion
from solidx.runtime.layers.fused.rotary import rotary_embedding_store_kv
from solidx.runtime.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    """Causal GQA attention over ``num_heads`` query and ``num_kv_heads`` KV heads (this rank's),
    with the rotary embedding ``rotary_emb`` (shared by the model's layers).

    ``k_cache`` / ``v_cache`` ([num_blocks, block_size, num_kv_heads, head_dim]) are bound by the
    model runner; while they are empty (the memory-profiling forward) nothing is cached.
    ``k_scale`` / ``v_scale`` are the fp8 KV-cache scales (1.0 for a cache in the model dtype).
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.scale = scale
        self.rotary_emb = rotary_emb
        self.k_cache = self.v_cache = torch.empty(0)
        self.k_scale = self.v_scale = 1.0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        """q [T, Hq*D], k/v [T, Hkv*D] (unit column stride), positions [T] -> [T, Hq*D].
        ``q`` and ``k`` are rotated in place: after the call they hold what was attended and
        cached."""
        ctx = get_forward_context()
        cached = self.k_cache.numel() > 0
        fused = cached and use_fusion(q)
        if fused:
            rotary_embedding_store_kv(
                positions, q, k, v, self.rotary_emb.cos_sin_cache, self.head_dim, self.k_cache,
                self.v_cache, ctx.slot_mapping, self.k_scale, self.v_scale,
            )
            ops.KERNEL_COUNTS["rotary_store_triton"] += 1
        else:
            self.rotary_emb(positions, q, k)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if cached and not fused:
            ops.store_kvcache(
                k, v, self.k_cache, self.v_cache, ctx.slot_mapping, self.k_scale, self.v_scale
            )
        if cached and ctx.decode_only:
            out = ops.decode_attention(
                q,
                self.k_cache,
                self.v_cache,
                ctx.block_tables,
                ctx.context_lens,
                ctx.max_context_len,
                self.scale,
                self.k_scale,
                self.v_scale,
            )
        elif cached and ctx.block_tables is not None:
            out = ops.prefill_attention(
                q,
                k,
                v,
                ctx.cu_seqlens_q,
                ctx.cu_seqlens_k,
                ctx.max_seqlen_q,
                ctx.max_seqlen_k,
                self.scale,
                self.k_cache,
                self.v_cache,
                ctx.block_tables,
                self.k_scale,
                self.v_scale,
            )
        else:
            out = ops.prefill_attention(
                q,
                k,
                v,
                ctx.cu_seqlens_q,
                ctx.cu_seqlens_k,
                ctx.max_seqlen_q,
                ctx.max_seqlen_k,
                self.scale,
            )
        return out.reshape(-1, self.num_heads * self.head_dim)
