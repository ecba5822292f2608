"""CUDA graphs for decode: one graph per batch-size bucket, replayed for decode-only steps.

Buckets are 1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, up to the first that holds
``max_num_seqs`` (``capture_sizes``). ``ModelRunner.prepare`` pads a decode batch of n sequences
to the smallest bucket >= n; a padded row is token 0 at position 0 with cache slot -1 (nothing is
stored), context length 0 (attention gives zeros) and a block-table row of -1, so it touches no
real sequence's cache and its hidden state is never sampled.

``DecodeGraphs.capture`` runs after the KV cache is allocated and after the model runner has run
every tuned GEMM solution once (``TunedGemms.warm_up``: a first call inside a capture must never
initialise a library or allocate); then each bucket gets an eager warm-up forward (kernels
compiled for its exact sizes) and its capture, largest bucket first, every graph
in one shared memory pool, each reading views of one set of static input buffers sized for the
largest bucket, with ``max_context_len`` pinned to ``max_model_len``. ``replay`` copies a step's
inputs into those buffers, replays the bucket's graph and returns its output rows (valid until
the next replay).

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

import torch

from solidx.gradlib.shapes_file import ShapeRow
from solidx.runtime.attention import KERNEL_COUNTS
from solidx.runtime.context import ForwardContext
from solidx.shape_capture.recorder import ShapeRecorder, active_recorder, recording

logger = logging.getLogger(__name__)

ModelForward = Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor]
"""``(input_ids [T], positions [T], context) -> hidden [T, H]``: the eager forward of one step."""


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


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor
    kernels: Counter[str]
    problems: list[ShapeRow]


class DecodeGraphs:
    """Decode graphs over the batch-size buckets ``sizes`` (ascending) for a model whose sequences
    use at most ``max_blocks`` KV blocks and ``max_model_len`` tokens."""

    def __init__(
        self,
        forward: ModelForward,
        sizes: list[int],
        max_blocks: int,
        max_model_len: int,
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.sizes = sizes
        self.max_model_len = max_model_len
        rows = sizes[-1]
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(rows, dtype=torch.int32, device=device)
        self.block_tables = torch.full((rows, max_blocks), -1, dtype=torch.int32, device=device)
        self.cu_seqlens = torch.arange(rows + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, _Graph] = {}

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
        """Capture every bucket, largest first, in one memory pool. Raises RuntimeError naming
        the bucket when a layer cannot be captured."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            try:
                self.graphs[size] = self._capture(size, pool)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"CUDA graph capture of the decode step for batch size {size} failed ({exc}); "
                    "run without CUDA graphs: enforce_eager=True (--enforce-eager)"
                ) from exc
        torch.cuda.synchronize()

    def _capture(self, size: int, pool: tuple[int, int]) -> _Graph:
        args = (self.input_ids[:size], self.positions[:size], self.context(size))
        with recording():  # warm-up: compiles and tunes kernels; its problems are not reported
            self.forward(*args)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        before = Counter(KERNEL_COUNTS)
        with recording() as calls, torch.cuda.graph(graph, pool=pool):
            hidden = self.forward(*args)
        kernels = Counter(KERNEL_COUNTS) - before
        for name, count in kernels.items():  # captured, not run: counted at each replay instead
            KERNEL_COUNTS[name] -= count
            if KERNEL_COUNTS[name] <= 0:
                del KERNEL_COUNTS[name]
        problems = calls.rows()
        outer = active_recorder()
        if outer is not None:
            _report(outer, problems)
        return _Graph(graph, hidden, kernels, problems)

    def replay(
        self, input_ids: torch.Tensor, positions: torch.Tensor, context: ForwardContext
    ) -> torch.Tensor | None:
        """Hidden states [T, H] of a decode step whose T is a captured bucket, from its graph
        (a view of the graph's output, overwritten by the next replay); None for any other step,
        which the caller runs eagerly."""
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
        entry.graph.replay()
        KERNEL_COUNTS.update(entry.kernels)
        recorder = active_recorder()
        if recorder is not None:
            _report(recorder, entry.problems)
        return entry.hidden


def _report(recorder: ShapeRecorder, problems: list[ShapeRow]) -> None:
    """Record each problem as often as one forward issued it, under its layers' names."""
    for row in problems:
        layers = row.layers or ("",)
        for i in range(row.count):
            recorder.record(row.problem, layers[i % len(layers)])
