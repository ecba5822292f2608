"""Attention: the torch reference against SDPA, then every kernel against the reference.

CPU tests run the Triton kernels under TRITON_INTERPRET=1 on tiny shapes; ``-m gpu`` tests run
them at real sizes (contexts up to 16k, 32 query / 8 KV heads, head size 128).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import runtime.attention as attention
from runtime.attention import reference


@dataclass
class Paged:
    """A paged KV cache holding ``lengths[i]`` tokens of sequence ``i`` in shuffled blocks."""
    k: torch.Tensor            # [sum(lengths), Hkv, D]: the tokens, packed
    v: torch.Tensor
    k_cache: torch.Tensor      # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks], -1 padded
    cu_seqlens: torch.Tensor   # [B + 1] int32
    k_scale: float
    v_scale: float


def make_paged(lengths: list[int], num_kv_heads: int, head_size: int, block_size: int,
               dtype: torch.dtype, cache_dtype: torch.dtype | None = None,
               device: str = "cpu", seed: int = 0) -> Paged:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cache_dtype = cache_dtype or dtype
    total = sum(lengths)
    k = torch.randn(total, num_kv_heads, head_size, generator=gen).to(device, dtype)
    v = torch.randn(total, num_kv_heads, head_size, generator=gen).to(device, dtype)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in lengths]
    num_blocks = sum(blocks_per_seq) + 3  # spare blocks that no sequence uses
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(lengths), max(max(blocks_per_seq), 1)), -1, dtype=torch.int32)
    slots = []
    used = 0
    for i, (n, nb) in enumerate(zip(lengths, blocks_per_seq)):
        tables[i, :nb] = order[used:used + nb].int()
        used += nb
        pos = torch.arange(n)
        slots.append(tables[i, pos // block_size].long() * block_size + pos % block_size)
    slot_mapping = torch.cat(slots).int().to(device)
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    k_cache = torch.randn(shape, generator=gen).to(device, cache_dtype)  # garbage in unused slots
    v_cache = torch.randn(shape, generator=gen).to(device, cache_dtype)
    k_scale, v_scale = (0.5, 0.25) if cache_dtype == torch.float8_e4m3fn else (1.0, 1.0)
    reference.store_kvcache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).int().to(device)
    return Paged(k, v, k_cache, v_cache, tables.to(device), cu, k_scale, v_scale)


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One sequence through torch SDPA (math) with an explicit bottom-right causal mask."""
    group = q.shape[1] // k.shape[1]
    qh = q.float().transpose(0, 1)
    kh = k.float().repeat_interleave(group, 1).transpose(0, 1)
    vh = v.float().repeat_interleave(group, 1).transpose(0, 1)
    mask = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).tril(k.shape[0] - q.shape[0])
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale).transpose(0, 1)


# ---- the reference --------------------------------------------------------------------------

@pytest.mark.parametrize("q_len,k_len,heads,kv_heads", [(5, 5, 4, 4), (3, 11, 8, 2), (1, 7, 8, 1)])
def test_reference_attend_matches_sdpa(q_len: int, k_len: int, heads: int, kv_heads: int) -> None:
    q = torch.randn(q_len, heads, 16)
    k, v = torch.randn(k_len, kv_heads, 16), torch.randn(k_len, kv_heads, 16)
    torch.testing.assert_close(reference.attend(q, k, v, 0.3), sdpa_causal(q, k, v, 0.3))


def test_store_kvcache_writes_slots_and_skips_padding() -> None:
    k, v = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    k_cache, v_cache = torch.zeros(3, 4, 2, 8), torch.zeros(3, 4, 2, 8)
    reference.store_kvcache(k, v, k_cache, v_cache, torch.tensor([5, -1, 0, 11], dtype=torch.int32))
    flat_k, flat_v = k_cache.view(12, 2, 8), v_cache.view(12, 2, 8)
    torch.testing.assert_close(flat_k[[5, 0, 11]], k[[0, 2, 3]])
    torch.testing.assert_close(flat_v[[5, 0, 11]], v[[0, 2, 3]])
    assert flat_k.abs().sum(dim=(1, 2)).count_nonzero() == 3


def test_store_kvcache_fp8_stores_scaled_values() -> None:
    k, v = torch.randn(3, 1, 8) * 40, torch.randn(3, 1, 8)
    k_cache = torch.zeros(1, 4, 1, 8, dtype=torch.float8_e4m3fn)
    v_cache = torch.zeros_like(k_cache)
    reference.store_kvcache(k, v, k_cache, v_cache, torch.tensor([0, 1, 2], dtype=torch.int32),
                            k_scale=0.5, v_scale=2.0)
    torch.testing.assert_close(k_cache[0, :3].float() * 0.5, k, rtol=0.07, atol=0)
    torch.testing.assert_close(v_cache[0, :3].float() * 2.0, v, rtol=0.07, atol=0.02)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float8_e4m3fn])
def test_reference_prefill_from_cache_matches_dense(cache_dtype: torch.dtype) -> None:
    lengths = [7, 1, 16, 21]
    paged = make_paged(lengths, 2, 8, 4, torch.float32, cache_dtype)
    q = torch.randn(sum(lengths), 4, 8)
    dense = reference.prefill_attention(q, paged.k, paged.v, paged.cu_seqlens, paged.cu_seqlens,
                                        21, 21, 0.35)
    cached = reference.prefill_attention(q, None, None, paged.cu_seqlens, paged.cu_seqlens, 21, 21,
                                         0.35, paged.k_cache, paged.v_cache, paged.block_tables,
                                         paged.k_scale, paged.v_scale)
    tol = 0 if cache_dtype == torch.float32 else 0.1
    torch.testing.assert_close(cached, dense, rtol=tol, atol=tol)
    for i in range(len(lengths)):
        s, e = paged.cu_seqlens[i], paged.cu_seqlens[i + 1]
        torch.testing.assert_close(dense[s:e], sdpa_causal(q[s:e], paged.k[s:e], paged.v[s:e], 0.35))


def test_reference_chunked_prefill_and_decode_see_the_context() -> None:
    """The last queries of a sequence (chunked prefill) and decode agree with full prefill."""
    lengths = [9, 13, 4]
    paged = make_paged(lengths, 1, 8, 4, torch.float32)
    q = torch.randn(sum(lengths), 2, 8)
    full = reference.prefill_attention(q, paged.k, paged.v, paged.cu_seqlens, paged.cu_seqlens,
                                       13, 13, 0.5)
    last = paged.cu_seqlens[1:].long() - 1
    chunk_q = torch.cat([q[e - 3:e] for e in paged.cu_seqlens[1:].tolist()])
    cu_q = torch.tensor([0, 3, 6, 9], dtype=torch.int32)
    chunk = reference.prefill_attention(chunk_q, None, None, cu_q, paged.cu_seqlens, 3, 13, 0.5,
                                        paged.k_cache, paged.v_cache, paged.block_tables)
    torch.testing.assert_close(chunk, torch.cat([full[e - 3:e] for e in paged.cu_seqlens[1:].tolist()]))
    context_lens = torch.tensor(lengths, dtype=torch.int32)
    decoded = reference.decode_attention(q[last], paged.k_cache, paged.v_cache, paged.block_tables,
                                         context_lens, 16, 0.5)
    torch.testing.assert_close(decoded, full[last])


def test_reference_decode_padding_row_is_zero() -> None:
    paged = make_paged([5], 1, 8, 4, torch.float32)
    tables = torch.cat([paged.block_tables, torch.full_like(paged.block_tables, -1)])
    out = reference.decode_attention(torch.randn(2, 1, 8), paged.k_cache, paged.v_cache, tables,
                                     torch.tensor([5, 0], dtype=torch.int32), 8, 1.0)
    assert out[1].abs().sum() == 0 and out[0].abs().sum() > 0


def test_public_api_on_cpu_counts_the_reference() -> None:
    paged = make_paged([6], 2, 8, 4, torch.float32)
    before = attention.KERNEL_COUNTS["decode_reference"]
    attention.decode_attention(torch.randn(1, 2, 8), paged.k_cache, paged.v_cache,
                               paged.block_tables, torch.tensor([6], dtype=torch.int32), 8, 1.0)
    assert attention.KERNEL_COUNTS["decode_reference"] == before + 1
