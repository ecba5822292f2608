"""Attention: the torch reference against SDPA, then every kernel against the reference.

CPU tests run the Triton kernels under TRITON_INTERPRET=1 on tiny shapes; ``-m gpu`` tests run
them at real sizes (contexts up to 128k, 32 query / 8 KV heads, head size 128).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from solidx.runtime import attention
from solidx.runtime.attention import (
    paged_custom,
    paged_v2,
    reference,
    selector,
    split_kv,
    triton_prefill,
    triton_store,
)
from solidx.runtime.attention.paged_custom import paged_attention_custom
from solidx.runtime.attention.paged_v2 import paged_attention_v2


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
    torch.manual_seed(0)
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
        torch.testing.assert_close(dense[s:e],
                                   sdpa_causal(q[s:e], paged.k[s:e], paged.v[s:e], 0.35))


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
    torch.testing.assert_close(chunk, torch.cat([full[e - 3:e]
                                                 for e in paged.cu_seqlens[1:].tolist()]))
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


# ---- the kernels against the reference ------------------------------------------------------

TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to the output dtype's rounding, relative to the output's magnitude (long contexts
    average many values, so outputs are small and a fixed atol would hide missing keys)."""
    tol = TOL[out.dtype]
    scale = max(ref.float().abs().max().item(), 1e-3)
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * scale)


def check_prefill(lengths: list[int], q_lens: list[int], heads: int, kv_heads: int, head_size: int,
                  dtype: torch.dtype, paged: bool, cache_dtype: torch.dtype | None = None,
                  device: str = "cpu", config: triton_prefill.PrefillConfig | None = None) -> None:
    """Triton prefill of the last ``q_lens[i]`` queries of each sequence against the reference."""
    p = make_paged(lengths, kv_heads, head_size, 16, dtype, cache_dtype, device)
    q = torch.randn(sum(q_lens), heads, head_size, device=device).to(dtype)
    cu_q = torch.tensor([0] + q_lens, device=device).cumsum(0).int()
    cache = (p.k_cache, p.v_cache, p.block_tables) if paged else (None, None, None)
    args = (q, p.k, p.v, cu_q, p.cu_seqlens, max(q_lens), max(lengths), head_size ** -0.5, *cache,
            p.k_scale, p.v_scale)
    out = triton_prefill.prefill_attention(*args, config=config)
    assert_matches(out, reference.prefill_attention(*args))


def check_decode(kernel: str, lengths: list[int], heads: int, kv_heads: int, head_size: int,
                 block_size: int, dtype: torch.dtype, cache_dtype: torch.dtype | None = None,
                 partition_size: int | None = None, device: str = "cpu") -> None:
    p = make_paged(lengths, kv_heads, head_size, block_size, dtype, cache_dtype, device)
    q = torch.randn(len(lengths), heads, head_size, device=device).to(dtype)
    context_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    max_context_len = max(lengths) + 5  # an upper bound, as under CUDA graphs
    args = (q, p.k_cache, p.v_cache, p.block_tables, context_lens, max_context_len,
            head_size ** -0.5, p.k_scale, p.v_scale)
    fn = paged_attention_custom if kernel == "custom" else paged_attention_v2
    default = paged_custom.PARTITION_SIZE if kernel == "custom" else paged_v2.PARTITION_SIZE
    out = fn(*args, partition_size=partition_size or default)
    ref = reference.decode_attention(*args)
    assert_matches(out, ref)
    assert out.isfinite().all()


@pytest.mark.parametrize("heads,kv_heads,head_size,dtype,paged,cache_dtype", [
    (4, 1, 16, torch.float16, False, None),
    (8, 1, 24, torch.float16, True, None),
    (2, 2, 32, torch.bfloat16, True, None),
    (4, 2, 16, torch.float16, True, torch.float8_e4m3fn),
])
def test_triton_prefill(heads: int, kv_heads: int, head_size: int, dtype: torch.dtype, paged: bool,
                        cache_dtype: torch.dtype | None) -> None:
    lengths = [7, 33, 1, 16]
    check_prefill(lengths, lengths, heads, kv_heads, head_size, dtype, paged, cache_dtype)


def test_triton_prefill_chunked_from_cache() -> None:
    """Queries that are the tail of longer contexts (chunked prefill, prefix hits, decode rows)."""
    check_prefill([21, 40, 9, 17], [5, 18, 0, 1], 4, 2, 16, torch.float16, paged=True)


@pytest.mark.parametrize("heads,kv_heads,head_size,dtype,cache_dtype,partition", [
    (4, 1, 16, torch.float16, None, 32),
    (4, 1, 16, torch.float16, None, None),
    (8, 1, 32, torch.float16, None, 32),
    (2, 2, 16, torch.bfloat16, None, 32),
    (8, 2, 16, torch.float16, torch.float8_e4m3fn, 32),
])
def test_paged_custom(heads: int, kv_heads: int, head_size: int, dtype: torch.dtype,
                      cache_dtype: torch.dtype | None, partition: int | None) -> None:
    check_decode("custom", [70, 33, 0, 16, 1, 32], heads, kv_heads, head_size, 16, dtype,
                 cache_dtype, partition)


@pytest.mark.parametrize("heads,kv_heads,head_size,block_size,dtype,cache_dtype,partition", [
    (4, 1, 24, 8, torch.float16, None, 32),
    (4, 4, 16, 16, torch.float16, None, None),
    (8, 1, 16, 16, torch.bfloat16, None, 32),
    (4, 2, 16, 5, torch.float16, torch.float8_e4m3fn, 32),
])
def test_paged_v2(heads: int, kv_heads: int, head_size: int, block_size: int, dtype: torch.dtype,
                  cache_dtype: torch.dtype | None, partition: int | None) -> None:
    check_decode("v2", [70, 33, 0, 16, 1, 40], heads, kv_heads, head_size, block_size, dtype,
                 cache_dtype, partition)


@pytest.mark.parametrize("dtype,cache_dtype", [(torch.float16, torch.float16),
                                               (torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float8_e4m3fn)])
def test_triton_store_matches_reference(dtype: torch.dtype, cache_dtype: torch.dtype) -> None:
    qkv = (torch.randn(6, 3, 2, 24) * 30).to(dtype)
    k, v = qkv[:, 1], qkv[:, 2]  # strided views, as the model's fused qkv gives them
    slots = torch.tensor([3, -1, 0, 11, 6, -1], dtype=torch.int32)
    caches = [torch.zeros(3, 4, 2, 24, dtype=cache_dtype) for _ in range(4)]
    reference.store_kvcache(k, v, caches[0], caches[1], slots, 0.5, 0.25)
    triton_store.store_kvcache(k, v, caches[2], caches[3], slots, 0.5, 0.25)
    assert torch.equal(caches[0].float(), caches[2].float())
    assert torch.equal(caches[1].float(), caches[3].float())


def test_fp8_store_rounds_to_nearest_even() -> None:
    """Every fp8 value and every midpoint between neighbours is stored as torch rounds it."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite()].sort().values
    x = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([500.0, -1000.0, 0.0])])
    x = torch.cat([x, torch.zeros(-x.numel() % 16)]).view(-1, 1, 16)
    slots = torch.arange(x.shape[0], dtype=torch.int32)
    caches = [torch.zeros(x.shape[0], 1, 1, 16, dtype=torch.float8_e4m3fn) for _ in range(4)]
    reference.store_kvcache(x, x, caches[0], caches[1], slots)
    triton_store.store_kvcache(x, x, caches[2], caches[3], slots)
    assert torch.equal(caches[0].float(), caches[2].float())


# ---- partitions sized in the kernel, as in a graph captured at max_model_len 131072 ----------

GRAPH_MAX_LEN = 131072
# With 4 splits of >= 16 tokens (BLOCK_N 16 on CPU): empty, one token, exactly one partition,
# one token past it, exactly 4 partitions of 16, 4 of 64 (the last of 8), 3 of 48 (the last 33).
SPLIT_LENGTHS = [0, 1, 16, 17, 64, 200, 129]


def check_split_decode(kernel: str, lengths: list[int], heads: int, kv_heads: int,
                       splits: int | None, cache_dtype: torch.dtype | None = None,
                       block_size: int = 16) -> torch.Tensor:
    """A kernel at ``max_context_len`` 131072 with 16-token partitions against the reference;
    returns its output."""
    p = make_paged(lengths, kv_heads, 16, block_size, torch.float16, cache_dtype)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(len(lengths), heads, 16, generator=gen).to(torch.float16)
    context_lens = torch.tensor(lengths, dtype=torch.int32)
    args = (q, p.k_cache, p.v_cache, p.block_tables, context_lens, GRAPH_MAX_LEN, 0.25,
            p.k_scale, p.v_scale)
    fn = paged_attention_custom if kernel == "custom" else paged_attention_v2
    out = fn(*args, partition_size=16, splits=splits)
    assert_matches(out, reference.decode_attention(*args))
    assert out[context_lens == 0].abs().sum() == 0
    assert split_kv.arrival_counters(q.device, 1).count_nonzero() == 0  # left at zero
    return out


@pytest.mark.parametrize("kernel", ["custom", "v2"])
@pytest.mark.parametrize("heads,kv_heads,splits", [(2, 2, 4), (4, 1, 16), (8, 1, 4)])
def test_split_decode_far_below_max_context_len(kernel: str, heads: int, kv_heads: int,
                                                splits: int) -> None:
    """GQA 1, 4, 8; 16 splits gives 13 partitions of 16 tokens to the 200-token context."""
    check_split_decode(kernel, SPLIT_LENGTHS, heads, kv_heads, splits)


@pytest.mark.parametrize("kernel", ["custom", "v2"])
def test_split_decode_fp8_cache(kernel: str) -> None:
    check_split_decode(kernel, SPLIT_LENGTHS, 4, 2, 4, torch.float8_e4m3fn)


@pytest.mark.parametrize("kernel", ["custom", "v2"])
def test_split_decode_many_partitions_merge_in_chunks(kernel: str) -> None:
    """63 live partitions: more than one merge step loads (``split_kv.merge_chunk``)."""
    assert split_kv.merge_chunk(2, 64, 1) < 63
    check_split_decode(kernel, [1000, 3], 2, 1, 64, block_size=8)


@pytest.mark.parametrize("kernel", ["custom", "v2"])
def test_split_decode_host_rule_repeats(kernel: str) -> None:
    """The host's split count at max_context_len 131072 (2 for v2, 3 for custom here); a
    second call gives the same output (the counters were left at zero)."""
    first = check_split_decode(kernel, [0, 17, 200], 4, 2, None)
    assert torch.equal(first, check_split_decode(kernel, [0, 17, 200], 4, 2, None))


def test_num_splits_does_not_grow_with_max_model_len() -> None:
    cpu = torch.device("cpu")
    target = split_kv.CPU_SM_COUNT * split_kv.PROGRAMS_PER_SM
    for rows in (1, 3, 8, 1000):
        at_graph = split_kv.num_splits(rows, GRAPH_MAX_LEN, 256, cpu)
        assert at_graph == split_kv.num_splits(rows, 16 * 256, 256, cpu)
        assert at_graph == max(1, min(-(-target // rows), split_kv.MAX_SPLITS))
    assert split_kv.num_splits(1, 300, 256, cpu) == 2  # an eager step: its real bound caps it
    assert split_kv.num_splits(1, 0, 256, cpu) == 1
    tmp_out, max_logits, exp_sums = split_kv.split_buffers(torch.empty(3, 8, 16), 5, 16)
    assert tmp_out.shape == (3, 8, 5, 16) and max_logits.shape == exp_sums.shape == (3, 8, 5)


def test_custom_envelope() -> None:
    q = torch.empty(2, 32, 128, dtype=torch.bfloat16)
    cache = torch.empty(4, 16, 8, 128, dtype=torch.bfloat16)
    assert selector.custom_paged_applies(q, cache, 131072)
    assert not selector.custom_paged_applies(q, cache, 131073)
    assert not selector.custom_paged_applies(q, torch.empty(4, 32, 8, 128), 4096)
    assert not selector.custom_paged_applies(q.float(), cache, 4096)
    assert not selector.custom_paged_applies(torch.empty(2, 32, 64), torch.empty(4, 16, 1, 64), 64)


# ---- real sizes on the GPU ------------------------------------------------------------------

GPU_DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_triton_prefill(dtype: torch.dtype) -> None:
    lengths = [4096, 1000, 17]
    check_prefill(lengths, lengths, 32, 8, 128, dtype, paged=False, device="cuda")
    check_prefill([8192, 3000, 33], [512, 3000, 1], 32, 8, 128, dtype, paged=True, device="cuda")
    check_prefill([700, 64], [700, 64], 16, 2, 64, dtype, paged=True, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kernel", ["custom", "v2"])
def test_gpu_paged_decode(kernel: str, dtype: torch.dtype) -> None:
    lengths = [16384, 4097, 1, 0, 300, 8191, 256, 257]
    check_decode(kernel, lengths, 32, 8, 128, 16, dtype, device="cuda")
    check_decode(kernel, lengths[1:], 32, 8, 128, 16, dtype, torch.float8_e4m3fn, device="cuda")
    check_decode(kernel, [200, 31, 0], 16, 1, 128, 16, dtype, device="cuda")  # one partition


@pytest.mark.gpu
def test_gpu_v2_other_shapes() -> None:
    check_decode("v2", [3000, 5, 0, 1024], 12, 4, 80, 32, torch.bfloat16, device="cuda")
    check_decode("v2", [600, 77], 8, 8, 64, 8, torch.float16, device="cuda")


@pytest.mark.gpu
def test_gpu_store_matches_reference() -> None:
    for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        k, v = (torch.randn(300, 8, 128, device="cuda", dtype=torch.bfloat16) * 20
                for _ in range(2))
        slots = torch.randperm(64 * 16, device="cuda")[:300].int()
        slots[::7] = -1
        caches = [torch.zeros(64, 16, 8, 128, device="cuda", dtype=cache_dtype) for _ in range(4)]
        reference.store_kvcache(k, v, caches[0], caches[1], slots, 0.5, 0.25)
        triton_store.store_kvcache(k, v, caches[2], caches[3], slots, 0.5, 0.25)
        assert torch.equal(caches[0].float(), caches[2].float())
        assert torch.equal(caches[1].float(), caches[3].float())


@pytest.mark.gpu
@pytest.mark.parametrize("custom,kernel", [("1", "paged_custom"), ("0", "paged_v2")])
def test_gpu_decode_dispatch_in_a_cuda_graph(custom: str, kernel: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The public decode runs inside a CUDA graph; replays follow new inputs; padding rows are 0."""
    monkeypatch.setenv("VLLM_USE_ROCM_CUSTOM_PAGED_ATTN", custom)
    p = make_paged([3000, 1200, 17, 0], 8, 128, 16, torch.bfloat16, device="cuda")
    q = torch.randn(4, 32, 128, device="cuda", dtype=torch.bfloat16)
    context_lens = torch.tensor([3000, 1200, 17, 0], dtype=torch.int32, device="cuda")
    args = (q, p.k_cache, p.v_cache, p.block_tables, context_lens, 4096, 128 ** -0.5)
    before = attention.KERNEL_COUNTS[kernel]
    attention.decode_attention(*args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention.decode_attention(*args)
    assert attention.KERNEL_COUNTS[kernel] == before + 2
    q.copy_(torch.randn_like(q))
    context_lens.copy_(torch.tensor([2999, 1, 17, 0], dtype=torch.int32))
    graph.replay()
    assert_matches(out, reference.decode_attention(*args))
    assert out[3].abs().sum() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("custom,kernel", [("1", "paged_custom"), ("0", "paged_v2")])
def test_gpu_decode_graph_captured_at_131072(custom: str, kernel: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph captured at max_context_len 131072 replays short and long contexts right, and
    bit for bit the same on every replay (a merge that read a partition before it was written
    would differ)."""
    monkeypatch.setenv("VLLM_USE_ROCM_CUSTOM_PAGED_ATTN", custom)
    caps = [131072, 70000, 4096, 600]
    p = make_paged(caps, 8, 128, 16, torch.bfloat16, device="cuda")
    q = torch.randn(4, 32, 128, device="cuda", dtype=torch.bfloat16)
    context_lens = torch.tensor([300, 1, 0, 257], dtype=torch.int32, device="cuda")
    args = (q, p.k_cache, p.v_cache, p.block_tables, context_lens, GRAPH_MAX_LEN, 128 ** -0.5)
    before = attention.KERNEL_COUNTS[kernel]
    attention.decode_attention(*args)  # compile (and make the counters) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention.decode_attention(*args)
    assert attention.KERNEL_COUNTS[kernel] == before + 2
    gen = torch.Generator().manual_seed(3)
    cases = [[300, 1, 0, 257], caps, [256, 4096, 1, 0], [131071, 513, 4095, 599]]
    cases += [[int(torch.randint(0, cap + 1, (1,), generator=gen)) for cap in caps]
              for _ in range(3)]
    for lengths in cases:
        q.copy_(torch.randn_like(q))
        context_lens.copy_(torch.tensor(lengths, dtype=torch.int32))
        graph.replay()
        assert_matches(out, reference.decode_attention(*args))
        assert out[context_lens == 0].abs().sum() == 0
        first = out.clone()
        for _ in range(20):
            graph.replay()
            assert torch.equal(out, first), lengths


@pytest.mark.gpu
@pytest.mark.parametrize("triton_flag,kernel",
                         [("1", "prefill_triton"), ("0", "prefill_sdpa_flash")])
def test_gpu_prefill_dispatch(triton_flag: str, kernel: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_USE_FLASH_ATTN_TRITON", raising=False)
    monkeypatch.setenv("VLLM_USE_TRITON_FLASH_ATTN", triton_flag)
    lengths, q_lens = [1500, 40], [1500, 3]
    p = make_paged(lengths, 8, 128, 16, torch.float16, device="cuda")
    cu_q = torch.tensor([0] + q_lens, device="cuda").cumsum(0).int()
    q = torch.randn(sum(q_lens), 32, 128, device="cuda", dtype=torch.float16)
    before = attention.KERNEL_COUNTS[kernel]
    args = (q, None, None, cu_q, p.cu_seqlens, 1500, 1500, 0.1, p.k_cache, p.v_cache,
            p.block_tables)
    assert_matches(attention.prefill_attention(*args), reference.prefill_attention(*args))
    q = torch.randn(sum(lengths), 32, 128, device="cuda", dtype=torch.float16)
    args = (q, p.k, p.v, p.cu_seqlens, p.cu_seqlens, 1500, 1500, 0.1)
    assert_matches(attention.prefill_attention(*args), reference.prefill_attention(*args))
    assert attention.KERNEL_COUNTS[kernel] == before + 2
