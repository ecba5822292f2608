"""CUDA graphs for decode: per batch-size bucket, one graph of the model forward and the LM head,
and one graph per sampling mode of the sampler; replayed for decode-only steps.

Buckets are 1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, up to the first that holds
``max_num_seqs`` (``capture_sizes``). ``ModelRunner.prepare`` pads a decode batch of n sequences
to the smallest bucket >= n; a padded row is token 0 at position 0 with cache slot -1 (nothing is
stored), context length 0 (attention gives zeros) and a block-table row of -1, so it touches no
real sequence's cache, and its sampling row is greedy (its token is never used).

``DecodeGraphs.capture`` runs after the KV cache is allocated and after the model runner has run
every tuned GEMM solution once (``TunedGemms.warm_up``: a first call inside a capture must never
initialise a library or allocate); then each graph gets an eager warm-up run (kernels compiled
for its exact sizes) and its capture, largest bucket first, every graph in one shared memory
pool. Every graph reads and writes static buffers sized for the largest bucket: the step's
inputs (``max_context_len`` pinned to ``max_model_len``), the hidden states and logits the
forward graph writes, the packed sampling rows (``sampling_metadata.ROW``) and the token ids a
sampler graph writes. A step replays the forward graph (``replay``: its inputs copied in first),
then either a sampler graph (``sample``: the rows arrive in one pinned host-to-device copy) or,
for settings the sampler graphs do not cover, the eager sampler over the static logits. The
sampler graphs are three (``GRAPH_MODES``): greedy; temperature with min_p; and with top-k/top-p
(their sort is paid only by steps that ask for it). The outputs are valid until the next replay.

A replay runs no Python, so what a graph's layers report when they run is noted at capture and
reported again at each replay: the kernels counted in ``attention.KERNEL_COUNTS``, and the GEMM
problems seen by the active shape recorder (capture reports them too). With shape capture on,
the decode ``N`` values recorded are therefore exactly the bucket sizes.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from solidx.gradlib.shapes_file import ShapeRow
from solidx.runtime.attention import KERNEL_COUNTS
from solidx.runtime.context import ForwardContext
from solidx.runtime.layers.sampler import sample
from solidx.runtime.sampling_metadata import ROW_WORDS, SamplingMode, unpack
from solidx.shape_capture.recorder import ShapeRecorder, active_recorder, recording

logger = logging.getLogger(__name__)

ModelForward = Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor]
"""``(input_ids [T], positions [T], context) -> hidden [T, H]``: the eager forward of one step."""
ComputeLogits = Callable[[torch.Tensor], torch.Tensor]
"""``hidden [T, H] -> logits [T, vocab]``: the LM head (and its all-gather under TP)."""

GRAPH_MODES = (
    SamplingMode(all_greedy=True, use_top_k_top_p=False, use_min_p=False),
    SamplingMode(all_greedy=False, use_top_k_top_p=False, use_min_p=True),
    SamplingMode(all_greedy=False, use_top_k_top_p=True, use_min_p=True),
)


def graph_mode(mode: SamplingMode) -> SamplingMode:
    """The sampler graph that runs a step of ``mode``: the same steps, with min_p (a min_p of 0
    masks nothing, so rows without it draw what the eager sampler draws)."""
    if mode.all_greedy:
        return GRAPH_MODES[0]
    return GRAPH_MODES[2] if mode.use_top_k_top_p else GRAPH_MODES[1]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The decode batch sizes graphs are captured for, ascending; the last one holds
    ``max_num_seqs`` (e.g. 20 -> [1, 2, 4, 8, 16, 24])."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = [1]
    while sizes[-1] < max_num_seqs:
        size = sizes[-1]
        sizes.append(size * 2 if size < 8 else size + (8 if size < 64 else 16))
    return sizes


def bucket_for(sizes: list[int], batch_size: int) -> int | None:
    """The smallest of ``sizes`` (ascending) that holds ``batch_size`` sequences, or None."""
    i = bisect.bisect_left(sizes, batch_size)
    return sizes[i] if i < len(sizes) else None


def record_graph(step: Callable[[], None], pool: tuple[int, int]) -> torch.cuda.CUDAGraph:
    """``step`` captured as a CUDA graph in ``pool`` (replaying it does what ``step`` did)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    kernels: Counter[str]
    problems: list[ShapeRow]

    def replay(self) -> None:
        self.graph.replay()
        KERNEL_COUNTS.update(self.kernels)
        recorder = active_recorder()
        if recorder is not None:
            _report(recorder, self.problems)


class DecodeGraphs:
    """Decode graphs over the batch-size buckets ``sizes`` (ascending) for a model whose sequences
    use at most ``max_blocks`` KV blocks and ``max_model_len`` tokens, over ``vocab_size``
    tokens."""

    def __init__(
        self,
        forward: ModelForward,
        compute_logits: ComputeLogits,
        sizes: list[int],
        max_blocks: int,
        max_model_len: int,
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.compute_logits = compute_logits
        self.sizes = sizes
        self.max_model_len = max_model_len
        rows = sizes[-1]
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(rows, dtype=torch.int32, device=device)
        self.block_tables = torch.full((rows, max_blocks), -1, dtype=torch.int32, device=device)
        self.cu_seqlens = torch.arange(rows + 1, dtype=torch.int32, device=device)
        # the sampling rows, greedy with every filter off until a step sends its own: filled on
        # the host (pinned on CUDA) and copied in one transfer
        self.sampling = torch.zeros(rows, ROW_WORDS, dtype=torch.int32, device=device)
        padding = unpack(self.sampling, GRAPH_MODES[0])
        padding.top_k.fill_(vocab_size)
        padding.top_p.fill_(1.0)
        on_gpu = device.type == "cuda"
        self.staging = torch.empty(rows, ROW_WORDS, dtype=torch.int32, pin_memory=on_gpu)
        self.copied = torch.cuda.Event() if on_gpu else None
        self.tokens = torch.zeros(rows, dtype=torch.int64, device=device)
        # the forward graphs' outputs [rows, H] and [rows, vocab], made at the first warm-up
        self.hidden: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.graphs: dict[int, _Graph] = {}
        self.samplers: dict[tuple[int, SamplingMode], _Graph] = {}

    def bucket(self, batch_size: int) -> int | None:
        """The bucket a decode batch of ``batch_size`` sequences is padded to, or None (eager)."""
        return bucket_for(self.sizes, batch_size)

    def context(self, size: int) -> ForwardContext:
        """The static attention context of bucket ``size`` (decode, contexts <= max_model_len)."""
        return ForwardContext(
            slot_mapping=self.slot_mapping[:size],
            cu_seqlens_q=self.cu_seqlens[: size + 1],
            cu_seqlens_k=self.cu_seqlens[: size + 1],  # not read by decode attention
            max_seqlen_q=1,
            max_seqlen_k=self.max_model_len,
            context_lens=self.context_lens[:size],
            max_context_len=self.max_model_len,
            block_tables=self.block_tables[:size],
            decode_only=True,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket's graphs, largest first, in one memory pool. Raises RuntimeError
        naming the bucket when a layer cannot be captured."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            try:
                self.graphs[size] = self._record(partial(self._forward_step, size), pool)
                for mode in GRAPH_MODES:
                    step = partial(self._sample_step, size, mode)
                    self.samplers[size, mode] = self._record(step, pool)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"CUDA graph capture of the decode step for batch size {size} failed ({exc}); "
                    "run without CUDA graphs: enforce_eager=True (--enforce-eager)"
                ) from exc
        torch.cuda.synchronize()

    def _forward_step(self, size: int) -> None:
        context = self.context(size)
        hidden = self.forward(self.input_ids[:size], self.positions[:size], context)
        logits = self.compute_logits(hidden)
        if self.hidden is None or self.logits is None:  # the largest bucket's warm-up
            self.hidden = hidden.new_empty((self.sizes[-1], *hidden.shape[1:]))
            self.logits = logits.new_empty((self.sizes[-1], *logits.shape[1:]))
        self.hidden[:size].copy_(hidden)
        self.logits[:size].copy_(logits)

    def _sample_step(self, size: int, mode: SamplingMode) -> None:
        params = unpack(self.sampling[:size], mode)
        self.tokens[:size].copy_(sample(self.logits[:size], params))

    def _record(self, step: Callable[[], None], pool: tuple[int, int]) -> _Graph:
        with recording():  # warm-up: compiles and tunes kernels; its problems are not reported
            step()
        torch.cuda.synchronize()
        before = Counter(KERNEL_COUNTS)
        with recording() as calls:
            graph = record_graph(step, pool)
        kernels = Counter(KERNEL_COUNTS) - before
        for name, count in kernels.items():  # captured, not run: counted at each replay instead
            KERNEL_COUNTS[name] -= count
            if KERNEL_COUNTS[name] <= 0:
                del KERNEL_COUNTS[name]
        problems = calls.rows()
        outer = active_recorder()
        if outer is not None:
            _report(outer, problems)
        return _Graph(graph, kernels, problems)

    def replay(
        self, input_ids: torch.Tensor, positions: torch.Tensor, context: ForwardContext
    ) -> torch.Tensor | None:
        """Hidden states [T, H] of a decode step whose T is a captured bucket, from its graph,
        which also leaves the step's logits in ``logits[:T]`` (both views of static buffers,
        overwritten by the next replay); None for any other step, which the caller runs
        eagerly."""
        size = input_ids.shape[0]
        entry = self.graphs.get(size)
        if entry is None or not context.decode_only or context.block_tables is None:
            return None
        width = context.block_tables.shape[1]
        if width > self.block_tables.shape[1]:
            return None
        self.input_ids[:size].copy_(input_ids)
        self.positions[:size].copy_(positions)
        self.slot_mapping[:size].copy_(context.slot_mapping)
        self.context_lens[:size].copy_(context.context_lens)
        # Columns past ``width`` keep earlier steps' entries: attention reads only the blocks
        # below each row's context length.
        self.block_tables[:size, :width].copy_(context.block_tables)
        entry.replay()
        return self.hidden[:size]

    def sampling_rows(self, size: int) -> np.ndarray:
        """The host rows [size, ROW_WORDS] the next ``sample`` sends, to be filled by
        ``sampling_metadata.pack_rows`` (once the previous step's copy has left them)."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.staging[:size].numpy()

    def sample(self, size: int, mode: SamplingMode) -> torch.Tensor:
        """Token ids [size] (int64, a view of a static buffer) of the step just replayed, drawn
        by the sampler graph of ``mode`` from the rows in ``sampling_rows(size)``."""
        self.sampling[:size].copy_(self.staging[:size], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        self.samplers[size, graph_mode(mode)].replay()
        return self.tokens[:size]


def _report(recorder: ShapeRecorder, problems: list[ShapeRow]) -> None:
    """Record each problem as often as one forward issued it, under its layers' names."""
    for row in problems:
        layers = row.layers or ("",)
        for i in range(row.count):
            recorder.record(row.problem, layers[i % len(layers)])
