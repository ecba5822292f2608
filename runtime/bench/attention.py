"""``solidx bench attention``: solidx's attention kernels against the framework's, in one run.

Decode: a batch of equal contexts over a paged cache with shuffled blocks. The custom paged
kernel and PagedAttention v2 run against SDPA's flash backend (over a dense, unpaged copy of the
keys and values) and FlexAttention with a paged BlockMask built from the block tables.
FlexAttention reads the cache head-major, ``[1, Hkv, slots, D]`` (the layout of torch's
PagedAttention), so it gets its own copy of the same pages; its BlockMask's KV block is the
page: full pages skip the mask, the last partial page of each sequence is cut by a
``mask_mod``. Figures: time, GB/s of KV read, % of the device-to-device copy bandwidth measured
in the same run (:func:`solidx.gradlib.timing.copy_bandwidth`), speed-up over FlexAttention.

With ``max_model_len`` (``--max-model-len M``) decode is timed as the runtime's decode graphs
run it: the custom kernel (where it applies at ``M``) and v2 called with ``max_context_len = M``
over the real contexts, :data:`GRAPH_CALLS` calls captured in one CUDA graph (one per layer,
over rotating copies of the cache so that the calls together read beyond L2) and timed by
replay; the framework's kernels take no ``max_context_len`` and are left to the plain run.

Prefill: one causal sequence through the Triton flash kernel and SDPA flash; TFLOP/s and ratio.
Every output is checked against the torch reference before its time is reported. ``sweep`` also
times candidate launch configurations of the Triton kernels (and, with ``max_model_len``, split
counts).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
import triton
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from solidx.gradlib.timing import copy_bandwidth, l2_bytes, time_calls
from solidx.runtime.attention import reference, selector
from solidx.runtime.attention.paged_custom import paged_attention_custom
from solidx.runtime.attention.paged_v2 import DecodeConfig, paged_attention_v2
from solidx.runtime.attention.triton_prefill import PrefillConfig
from solidx.runtime.attention.triton_prefill import prefill_attention as triton_prefill
from solidx.runtime.bench.result import BenchResult, device_name

CUSTOM_SWEEP = [DecodeConfig(n, w, s) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3)]
V2_SWEEP = [DecodeConfig(n, w, s) for n in (32, 64, 128) for w in (2, 4) for s in (1, 2)]
PREFILL_SWEEP = [PrefillConfig(128, 64, 8, 3), PrefillConfig(128, 128, 8, 3),
                 PrefillConfig(128, 64, 4, 3), PrefillConfig(128, 32, 4, 4),
                 PrefillConfig(64, 64, 4, 3), PrefillConfig(128, 64, 8, 4),
                 PrefillConfig(128, 128, 8, 2), PrefillConfig(64, 128, 4, 3)]
SPLITS_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128)
GRAPH_CALLS = 32
"""Decode calls in one timed CUDA graph with ``max_model_len``: Llama-3-8B's 32 layers."""


@dataclass(frozen=True)
class BenchConfig:
    """One run: decode ``batch_size`` sequences at each of ``context_lens`` and prefill one
    causal sequence of each of ``prefill_lens``, with these head counts, head size, KV block
    size and dtype; ``sweep`` also times :data:`CUSTOM_SWEEP`, :data:`V2_SWEEP` and
    :data:`PREFILL_SWEEP`. ``max_model_len``: time decode as a CUDA graph captured at it."""

    batch_size: int = 32
    context_lens: tuple[int, ...] = (4096, 16384)
    prefill_lens: tuple[int, ...] = (4096,)
    num_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16
    sweep: bool = False
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        longest = max(self.context_lens, default=0)
        if self.max_model_len is not None and self.max_model_len < longest:
            raise ValueError(f"--max-model-len {self.max_model_len} is below the longest "
                             f"--context-lens entry {longest}")


@dataclass
class Row:
    """One contender at one length: its figures, or ``None`` and the reason in ``note``."""

    phase: str                  # "decode" or "prefill"
    kernel: str
    tokens: int                 # context length (decode) or sequence length (prefill)
    ms: float | None = None
    gbps: float | None = None   # decode: KV bytes read / time
    pct_copy: float | None = None
    tflops: float | None = None  # prefill: causal attention FLOPs / time
    speedup: float | None = None  # decode: vs FlexAttention paged; prefill: vs SDPA flash
    max_rel_err: float | None = None
    note: str = ""


@dataclass
class AttentionResult(BenchResult):
    """Every row of one run on ``device`` (``config``: the :class:`BenchConfig`, as strings);
    ``copy_gbps``: the device-to-device copy bandwidth measured in the same run."""

    device: str
    config: dict[str, str]
    copy_gbps: float
    rows: list[Row] = field(default_factory=list)

    def summary(self) -> str:
        """The closing line (the rows are printed as they are made, :func:`format_row`)."""
        return f"device: {self.device}; copy bandwidth {self.copy_gbps:.0f} GB/s (read + write)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """ms per call of ``fn`` (:func:`solidx.gradlib.timing.time_calls`): after one warm-up call,
    the median of 5 samples of 20 calls on CUDA; one call off CUDA, where the kernels run in
    Triton's interpreter and the time is only a smoke test of the plumbing."""
    if device.type == "cuda":
        return time_calls(fn, device, calls=20, repeats=5, warmup=1).median_ms
    return time_calls(fn, device, calls=1, repeats=1, warmup=1).median_ms


def rel_err(out: Tensor, ref: Tensor) -> float:
    """max |out − ref| / max |ref| (in fp32)."""
    diff = (out.float() - ref.float()).abs().max()
    return (diff / ref.float().abs().max().clamp(min=1e-6)).item()


@dataclass
class DecodeInputs:
    """A decode batch over a paged cache with shuffled blocks, every sequence ``context_len``
    long, ``max_context_len`` its host-side bound: the arguments of ``paged_attention_*``
    (:attr:`args`)."""

    q: Tensor
    k_cache: Tensor
    v_cache: Tensor
    block_tables: Tensor
    context_lens: Tensor
    context_len: int
    scale: float
    max_context_len: int

    @property
    def args(self) -> tuple[Any, ...]:
        """``(q, k_cache, v_cache, block_tables, context_lens, max_context_len, scale)``."""
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.context_lens,
                self.max_context_len, self.scale)

    def kv_bytes(self) -> int:
        """Bytes of keys and values one decode step of the batch reads."""
        _, _, num_kv_heads, head_size = self.k_cache.shape
        return 2 * self.q.shape[0] * self.context_len * num_kv_heads * head_size * \
            self.k_cache.element_size()


def decode_inputs(cfg: BenchConfig, context_len: int, device: torch.device,
                  max_context_len: int | None = None) -> DecodeInputs:
    """Random queries, keys and values (``cfg``'s shapes) over blocks in a random order;
    ``max_context_len`` defaults to ``context_len``."""
    blocks_per_seq = triton.cdiv(context_len, cfg.block_size)
    num_blocks = cfg.batch_size * blocks_per_seq
    shape = (num_blocks, cfg.block_size, cfg.num_kv_heads, cfg.head_size)
    k_cache = torch.randn(shape, device=device, dtype=cfg.dtype)
    v_cache = torch.randn(shape, device=device, dtype=cfg.dtype)
    tables = torch.randperm(num_blocks, device=device).int().view(cfg.batch_size, blocks_per_seq)
    q = torch.randn(cfg.batch_size, cfg.num_heads, cfg.head_size, device=device, dtype=cfg.dtype)
    lens = torch.full((cfg.batch_size,), context_len, dtype=torch.int32, device=device)
    return DecodeInputs(q, k_cache, v_cache, tables, lens, context_len, cfg.head_size ** -0.5,
                        max_context_len or context_len)


def cache_copies(inp: DecodeInputs, calls: int) -> list[DecodeInputs]:
    """``inp`` and copies with cloned caches (queries and tables shared), enough that ``calls``
    calls over them read at least 4 x L2 (one copy when one already does), at most ``calls``."""
    wanted = math.ceil(4 * l2_bytes(inp.q.device) / max(1, inp.kv_bytes()))
    return [inp] + [replace(inp, k_cache=inp.k_cache.clone(), v_cache=inp.v_cache.clone())
                    for _ in range(min(calls, max(1, wanted)) - 1)]


def graph_ms(fns: list[Callable[[], object]], device: torch.device) -> float:
    """ms per call of :data:`GRAPH_CALLS` calls of ``fns`` in turn, captured in one CUDA graph
    and timed by replay (:func:`time_ms` off CUDA)."""
    for fn in fns:  # compile and make workspaces outside the capture
        fn()
    if device.type != "cuda":
        return time_ms(fns[0], device)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(GRAPH_CALLS):
            fns[i % len(fns)]()
    ms = time_calls(graph.replay, device, calls=5, repeats=5, warmup=2).median_ms
    graph.reset()
    return ms / GRAPH_CALLS


def sdpa_dense_decode(inp: DecodeInputs) -> Callable[[], Tensor]:
    """SDPA flash over a dense [B, Hkv, L, D] copy of each sequence's keys and values."""
    batch = inp.q.shape[0]
    k = inp.k_cache[inp.block_tables.long()].flatten(1, 2)[:, :inp.context_len].transpose(1, 2)
    v = inp.v_cache[inp.block_tables.long()].flatten(1, 2)[:, :inp.context_len].transpose(1, 2)
    k, v = k.contiguous(), v.contiguous()
    q = inp.q.view(batch, -1, 1, inp.q.shape[-1])

    def run() -> Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, scale=inp.scale, enable_gqa=True)
            return out[:, :, 0]
    return run


def flex_paged_decode(inp: DecodeInputs, compile_flex: bool) -> Callable[[], Tensor]:
    """FlexAttention over a head-major copy of the paged cache with a BlockMask from the block
    tables."""
    num_blocks, page, num_kv_heads, head_size = inp.k_cache.shape
    k = inp.k_cache.permute(2, 0, 1, 3).reshape(1, num_kv_heads, num_blocks * page, head_size)
    v = inp.v_cache.permute(2, 0, 1, 3).reshape(1, num_kv_heads, num_blocks * page, head_size)
    k, v = k.contiguous(), v.contiguous()
    tables = inp.block_tables.long()
    batch, max_pages = tables.shape
    lens = inp.context_lens.long()
    full_pages = lens // page
    owner = torch.full((num_blocks,), -1, dtype=torch.long, device=tables.device)
    owner[tables] = torch.arange(batch, device=tables.device)[:, None].expand(-1, max_pages)
    logical_page = torch.zeros(num_blocks, dtype=torch.long, device=tables.device)
    logical_page[tables] = torch.arange(max_pages, device=tables.device).expand(batch, -1)

    def inside_context(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        block = kv_idx // page
        return (owner[block] == b) & (logical_page[block] * page + kv_idx % page < lens[b])

    # Index rows span every physical page (BlockMask sizes its dense form by their width).
    full_indices = torch.zeros(batch, 1, 1, num_blocks, dtype=torch.int32, device=tables.device)
    full_indices[:, 0, 0, :max_pages] = tables
    partial_indices = torch.zeros_like(full_indices)
    partial_indices[:, 0, 0, :1] = tables.gather(1, full_pages.clamp(max=max_pages - 1)[:, None])
    block_mask = BlockMask.from_kv_blocks(
        kv_num_blocks=(lens % page > 0).int().view(batch, 1, 1), kv_indices=partial_indices,
        full_kv_num_blocks=full_pages.int().view(batch, 1, 1), full_kv_indices=full_indices,
        BLOCK_SIZE=(128, page), mask_mod=inside_context, seq_lengths=(1, num_blocks * page))
    flex = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention
    q = inp.q.view(batch, -1, 1, head_size)
    return lambda: flex(q, k, v, block_mask=block_mask, scale=inp.scale, enable_gqa=True)[:, :, 0]


def bench_decode(cfg: BenchConfig, context_len: int, copy_gbps: float,
                 device: torch.device) -> list[Row]:
    """Decode at ``context_len``: the custom kernel (where it applies), v2 (and the sweep), SDPA
    flash over a dense copy and FlexAttention paged; each checked against the reference, GB/s
    set against ``copy_gbps``, speed-up over FlexAttention."""
    inp = decode_inputs(cfg, context_len, device)
    ref = reference.decode_attention(*inp.args)
    candidates: list[tuple[str, str, Callable[[], Callable[[], Tensor]]]] = []
    if selector.custom_paged_applies(inp.q, inp.k_cache, context_len):
        candidates.append(("paged_custom", "", lambda: lambda: paged_attention_custom(*inp.args)))
    candidates.append(("paged_v2", "", lambda: lambda: paged_attention_v2(*inp.args)))
    if cfg.sweep:
        for c in CUSTOM_SWEEP:
            candidates.append(("paged_custom", str(c), lambda c=c: lambda: paged_attention_custom(
                *inp.args, config=c)))
        for c in V2_SWEEP:
            candidates.append(("paged_v2", str(c), lambda c=c: lambda: paged_attention_v2(
                *inp.args, config=c)))
    candidates.append(("sdpa_flash_dense", "SDPA flash over a dense copy (not paged)",
                       lambda: sdpa_dense_decode(inp)))
    candidates.append(("flex_paged", "FlexAttention, paged BlockMask (page = KV block)",
                       lambda: flex_paged_decode(inp, compile_flex=device.type == "cuda")))
    rows = []
    for kernel, note, build in candidates:
        row = Row("decode", kernel, context_len, note=note)
        try:
            fn = build()
            row.max_rel_err = rel_err(fn(), ref)
            row.ms = time_ms(fn, device)
            row.gbps = inp.kv_bytes() / (row.ms * 1e-3) / 1e9
            row.pct_copy = 100 * row.gbps / copy_gbps
        except Exception as exc:  # noqa: BLE001 (a failing contender is reported, not fatal)
            row.note = f"{note} failed: {type(exc).__name__}: {exc}"[:400]
        rows.append(row)
    flex = next((r.ms for r in rows if r.kernel == "flex_paged" and r.ms), None)
    for row in rows:
        if flex and row.ms:
            row.speedup = flex / row.ms
    return rows


def bench_decode_in_graph(cfg: BenchConfig, context_len: int, copy_gbps: float,
                          device: torch.device) -> list[Row]:
    """Decode at ``context_len`` as a graph captured at ``cfg.max_model_len`` runs it: the
    custom kernel (where it applies at that bound) and v2 (and the sweep, split counts
    included), each checked against the reference and timed by :func:`graph_ms`."""
    bound = cfg.max_model_len or context_len
    inp = decode_inputs(cfg, context_len, device, max_context_len=bound)
    copies = cache_copies(inp, GRAPH_CALLS)
    ref = reference.decode_attention(*inp.args)
    kernels: list[tuple[str, str, Callable[[DecodeInputs], Tensor]]] = []
    if selector.custom_paged_applies(inp.q, inp.k_cache, bound):
        kernels.append(("paged_custom", "", lambda c: paged_attention_custom(*c.args)))
    kernels.append(("paged_v2", "", lambda c: paged_attention_v2(*c.args)))
    if cfg.sweep:
        for c in CUSTOM_SWEEP:
            kernels.append(("paged_custom", str(c), lambda i, c=c: paged_attention_custom(
                *i.args, config=c)))
        for c in V2_SWEEP:
            kernels.append(("paged_v2", str(c), lambda i, c=c: paged_attention_v2(
                *i.args, config=c)))
        for n in SPLITS_SWEEP:
            kernels.append(("paged_custom", f"splits={n}", lambda i, n=n: paged_attention_custom(
                *i.args, splits=n)))
            kernels.append(("paged_v2", f"splits={n}", lambda i, n=n: paged_attention_v2(
                *i.args, splits=n)))
    rows = []
    for kernel, note, fn in kernels:
        row = Row("decode", kernel, context_len,
                  note=f"graph, max_model_len {bound}, {len(copies)} cache copies {note}".strip())
        try:
            row.max_rel_err = rel_err(fn(inp), ref)
            row.ms = graph_ms([lambda c=c: fn(c) for c in copies], device)
            row.gbps = inp.kv_bytes() / (row.ms * 1e-3) / 1e9
            row.pct_copy = 100 * row.gbps / copy_gbps
        except Exception as exc:  # noqa: BLE001 (a failing contender is reported, not fatal)
            row.note = f"{row.note} failed: {type(exc).__name__}: {exc}"[:400]
        rows.append(row)
    return rows


def bench_prefill(cfg: BenchConfig, seq_len: int, device: torch.device) -> list[Row]:
    """Prefill of one causal sequence of ``seq_len``: SDPA flash, then the Triton kernel (and
    the sweep); each checked against the reference, speed-up over SDPA flash."""
    q, k, v = (torch.randn(seq_len, heads, cfg.head_size, device=device, dtype=cfg.dtype)
               for heads in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads))
    cu = torch.tensor([0, seq_len], dtype=torch.int32, device=device)
    scale = cfg.head_size ** -0.5
    ref = reference.prefill_attention(q, k, v, cu, cu, seq_len, seq_len, scale)
    flops = 4 * cfg.num_heads * seq_len * seq_len * cfg.head_size / 2  # causal: half the matrix
    qh, kh, vh = (t.transpose(0, 1)[None] for t in (q, k, v))

    def sdpa() -> Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale,
                                                  enable_gqa=True)[0].transpose(0, 1)

    def triton_with(config: PrefillConfig | None) -> Callable[[], Tensor]:
        return lambda: triton_prefill(q, k, v, cu, cu, seq_len, seq_len, scale, config=config)

    candidates = [("sdpa_flash", "", sdpa), ("triton_prefill", "", triton_with(None))]
    if cfg.sweep:
        candidates += [("triton_prefill", str(c), triton_with(c)) for c in PREFILL_SWEEP]
    rows = []
    for kernel, note, fn in candidates:
        row = Row("prefill", kernel, seq_len, note=note)
        try:
            row.max_rel_err = rel_err(fn(), ref)
            row.ms = time_ms(fn, device)
            row.tflops = flops / (row.ms * 1e-3) / 1e12
        except Exception as exc:  # noqa: BLE001 (a failing contender is reported, not fatal)
            row.note = f"{note} failed: {type(exc).__name__}: {exc}"[:400]
        rows.append(row)
    base = rows[0].ms
    for row in rows:
        if base and row.ms:
            row.speedup = base / row.ms
    return rows


def run_benchmark(cfg: BenchConfig, device: torch.device,
                  progress: Callable[[Row], None] = lambda row: None) -> AttentionResult:
    """Run every prefill and decode comparison of ``cfg``; ``progress`` sees each row as it is
    made."""
    result = AttentionResult(device_name(device), {k: str(v) for k, v in vars(cfg).items()},
                             copy_bandwidth(device))
    for seq_len in cfg.prefill_lens:
        for row in bench_prefill(cfg, seq_len, device):
            result.rows.append(row)
            progress(row)
    decode = bench_decode if cfg.max_model_len is None else bench_decode_in_graph
    for context_len in cfg.context_lens:
        for row in decode(cfg, context_len, result.copy_gbps, device):
            result.rows.append(row)
            progress(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def format_row(row: Row) -> str:
    """One line of fixed-width columns; ``-`` for a figure not measured."""

    def f(x: float | None, fmt: str) -> str:
        return format(x, fmt) if x is not None else "-"
    return (f"{row.phase:<8}{row.kernel:<18}{row.tokens:>7} {f(row.ms, '9.4f')} ms "
            f"{f(row.gbps, '7.0f')} GB/s {f(row.pct_copy, '5.1f')}% copy "
            f"{f(row.tflops, '6.1f')} TFLOP/s x{f(row.speedup, '5.2f')} "
            f"err {f(row.max_rel_err, '.1e')} {row.note}")
