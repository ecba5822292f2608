"""The model runner: builds each step's input tensors and attention metadata from the scheduled
batch, owns the paged KV cache, runs the model and samples.

The KV cache is one allocation ``[2, layers, blocks, block_size, kv_heads, head_dim]``; layer i's
Attention gets the views ``[0, i]`` (keys) and ``[1, i]`` (values). Its size comes from the free
GPU memory after a profiling forward of ``max_num_batched_tokens`` tokens (times
``gpu_memory_utilization``), or from ``kv_cache_memory_bytes``, or on CPU from a 4 GiB budget
capped at what ``max_num_seqs`` sequences of ``max_model_len`` tokens can use.

On a GPU (unless ``enforce_eager``), decode steps replay CUDA graphs captured right after the
cache is allocated (``runtime.cuda_graphs``): the forward with the LM head, then the sampler,
whose settings go in one pinned transfer of packed rows (``sampling_metadata.ROW``); a step whose
settings the sampler graphs do not cover (penalties, ``min_tokens``) samples eagerly from the
graph's logits. A step's model inputs go to the device in two transfers from pinned memory, and
the only host synchronisation of a step is reading its sampled tokens (and the logprobs a
request asks for).
"""

from __future__ import annotations

import array
import itertools
import logging
import random
import time
from dataclasses import dataclass

import torch

from solidx.runtime.config import CPU_KV_CACHE_BYTES, Config
from solidx.runtime.cpu_threads import apply_cpu_threads
from solidx.runtime.context import ForwardContext, forward_context
from solidx.runtime.cuda_graphs import DecodeGraphs, capture_sizes
from solidx.runtime.distributed import tp_min
from solidx.runtime.layers.attention import Attention
from solidx.runtime.layers.linear import tuned_gemms
from solidx.runtime.layers.sampler import (
    SamplingTensors,
    TokenLogprobs,
    TopLogprobs,
    compute_logprobs,
    host_logprobs,
    sample,
)
from solidx.runtime.loader import load_model
from solidx.runtime.sampling_metadata import (
    ROW_WORDS,
    SamplingMode,
    graph_samples,
    keep_top,
    num_logprobs,
    pack_rows,
    prompt_logprob_rows,
    sampling_tensors,
    unpack,
)
from solidx.runtime.scheduler import ScheduledSeq
from solidx.runtime.sequence import PENDING_TOKEN, Sequence

logger = logging.getLogger(__name__)


@dataclass
class ModelInputs:
    """One step's model inputs: tokens [T] and their positions [T] (int64), the attention
    context, and the rows of the hidden states whose logits are sampled."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    context: ForwardContext
    sample_indices: torch.Tensor
    pending: list[tuple[int, int]]
    """(row, sequence id) of each input token still pending (written as 0 until fed)."""


@dataclass
class StepResult:
    """One step's results: for each batch entry that samples (in order) its next token and,
    where its request asks for logprobs, their values (else None); and for each sequence that
    asks for prompt logprobs, those of the prompt positions computed for the first time."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    prompt_logprobs: dict[int, list[TokenLogprobs]]


class LaunchedStep:
    """A step whose device work is queued: its sampled token ids (``rows``: sequence id -> row)
    stay on the device, and a copy to the host is under way; ``collect`` waits for it.
    ``order``: the batch order of the rows, when it differs (a split step)."""

    def __init__(self, token_ids: torch.Tensor, seqs: list[Sequence],
                 wanted: list[int | None], top: TopLogprobs | None,
                 prompt_logprobs: dict[int, list[TokenLogprobs]],
                 order: list[int] | None = None) -> None:
        self.token_ids = token_ids
        self.rows = {seq.seq_id: i for i, seq in enumerate(seqs)}
        self.wanted = wanted
        self.top = top
        self.prompt_logprobs = prompt_logprobs
        self.order = order
        # a copy now: a graph's output buffer is overwritten by the next replay
        self._done: torch.cuda.Event | None = None
        if token_ids.is_cuda:
            self._host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self._host.copy_(token_ids, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = token_ids.clone()

    def collect(self) -> StepResult:
        """Wait for the step and return its results (the only host synchronisation)."""
        if self._done is not None:
            self._done.synchronize()
        token_ids = self._host.tolist()
        if self.order is not None:
            token_ids = [token_ids[i] for i in self.order]
        if self.top is None:
            return StepResult(token_ids, [None] * len(token_ids), self.prompt_logprobs)
        entries = host_logprobs(self._host, self.top)
        logprobs = [None if k is None else keep_top(e, k) for k, e in zip(self.wanted, entries)]
        return StepResult(token_ids, logprobs, self.prompt_logprobs)


class ModelRunner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = config.torch_device
        self.block_size = config.block_size
        if self.device.type == "cpu":
            args = config.model_args
            apply_cpu_threads(args.hidden_size, args.intermediate_size,
                              config.tensor_parallel_size)
        self.model = load_model(config)
        self.vocab_size = self.model.args.vocab_size
        self.seeds = random.Random(config.seed)  # the seeds of requests that give none
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.graphs: DecodeGraphs | None = None  # captured once the KV cache exists
        self.num_kv_blocks = self._num_kv_blocks()
        layer = self.attention_layers[0]
        self.kv_cache = torch.zeros(
            2,
            len(self.attention_layers),
            self.num_kv_blocks,
            self.block_size,
            layer.num_kv_heads,
            layer.head_dim,
            dtype=config.kv_cache_torch_dtype,
            device=self.device,
        )
        for i, attention in enumerate(self.attention_layers):
            attention.k_cache, attention.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            self.num_kv_blocks,
            self.block_size,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**30,
        )
        self.graphs = self._capture_graphs()

    # -- one step -------------------------------------------------------------------------

    def run(self, batch: list[ScheduledSeq]) -> StepResult:
        """Compute the batch's tokens, sample the next ones, and the logprobs asked for."""
        return self.launch(batch).collect()

    @torch.inference_mode()
    def launch(self, batch: list[ScheduledSeq], previous: LaunchedStep | None = None
               ) -> LaunchedStep:
        """Queue the batch's device work and return without waiting for it. A sequence whose
        last token is still ``PENDING_TOKEN`` (sampled by ``previous``, not yet read on the
        host) gets it on the device from ``previous``'s token ids. A batch that mixes prompt
        chunks with decode rows that fill a CUDA-graph bucket runs as two forwards, the chunks
        eagerly and the decode rows by replay: one more read of the weights instead of a whole
        eager step (not when a request asks for logprobs)."""
        parts = self._split(batch)
        if parts is None:
            return LaunchedStep(*self._run(batch, previous))
        runs = [self._run(part, previous) for part in parts]
        seqs = [seq for run in runs for seq in run[1]]
        place = {seq.seq_id: i for i, seq in enumerate(seqs)}
        order = [place[item.seq.seq_id] for item in batch if item.samples]
        prompt_logprobs = {**runs[0][4], **runs[1][4]}
        return LaunchedStep(torch.cat([runs[0][0], runs[1][0]]), seqs, [None] * len(seqs), None,
                            prompt_logprobs, order)

    def _split(self, batch: list[ScheduledSeq]) -> list[list[ScheduledSeq]] | None:
        """The batch as (prompt chunks, decode rows) when it mixes them and the decode rows fit
        a captured bucket; else None."""
        if self.graphs is None:
            return None
        decode = [item for item in batch if item.num_tokens == 1]
        if not decode or len(decode) == len(batch) or self.graphs.bucket(len(decode)) is None:
            return None
        if any(item.samples and item.seq.params.logprobs is not None for item in batch):
            return None
        return [[item for item in batch if item.num_tokens != 1], decode]

    def _run(self, batch: list[ScheduledSeq], previous: LaunchedStep | None) -> tuple[
            torch.Tensor, list[Sequence], list[int | None], TopLogprobs | None,
            dict[int, list[TokenLogprobs]]]:
        """Queue one forward and its sampling: the sampled ids (device), the sequences that
        sample, their logprob counts, the logprobs asked for, the prompt logprobs."""
        inputs = self.prepare(batch)
        if inputs.pending:
            if previous is None:
                raise RuntimeError("a pending token without the step that sampled it")
            self._feed_pending(inputs, previous)
        seqs = [item.seq for item in batch if item.samples]
        wanted = [num_logprobs(seq.params.logprobs, self.vocab_size) for seq in seqs]
        hidden = None
        if self.graphs is not None:
            hidden = self.graphs.replay(inputs.input_ids, inputs.positions, inputs.context)
        if hidden is None:
            hidden = self._run_model(inputs.input_ids, inputs.positions, inputs.context)
            logits = self.model.compute_logits(hidden[inputs.sample_indices])
            token_ids = sample(logits, self._sampling_tensors(seqs))
        else:
            token_ids, logits = self._sample_replayed(batch, seqs, inputs)
        prompt_logprobs = self._prompt_logprobs(batch, hidden)
        top = None
        if any(k is not None for k in wanted):
            top = compute_logprobs(logits, token_ids, max(k or 0 for k in wanted))
        return token_ids, seqs, wanted, top, prompt_logprobs

    def _feed_pending(self, inputs: ModelInputs, previous: LaunchedStep) -> None:
        """Write the step's pending input tokens (``inputs.pending``) from ``previous``'s
        sampled ids, on the device and in stream order: before anything that replays over
        them."""
        dst = [row for row, _ in inputs.pending]
        src = [previous.rows[seq_id] for _, seq_id in inputs.pending]
        index = self._tensor(dst + src, torch.int64)
        inputs.input_ids.index_copy_(0, index[: len(dst)], previous.token_ids[index[len(dst):]])

    def _sample_replayed(
        self, batch: list[ScheduledSeq], seqs: list[Sequence], inputs: ModelInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and logits of the sampled rows of the decode step just replayed: drawn by
        a sampler graph when it covers every row's settings, else by the eager sampler over the
        graph's logits."""
        graphs = self.graphs
        size = inputs.input_ids.shape[0]
        # batch row i is row i of the graph: when every row samples, slices (views) pick them
        picked = slice(0, len(seqs)) if len(seqs) == len(batch) else inputs.sample_indices
        logits = graphs.logits[:size][picked]
        if not all(graph_samples(seq) for seq in seqs):
            return sample(logits, self._sampling_tensors(seqs)), logits
        rows = [item.seq if item.samples else None for item in batch]
        rows += [None] * (size - len(batch))
        mode = pack_rows(rows, self.vocab_size, self.seeds, graphs.sampling_rows(size))
        return graphs.sample(size, mode)[picked], logits

    def _sampling_tensors(self, seqs: list[Sequence]) -> SamplingTensors:
        return sampling_tensors(seqs, self.vocab_size, self.device, self.seeds)

    def _prompt_logprobs(
        self, batch: list[ScheduledSeq], hidden: torch.Tensor
    ) -> dict[int, list[TokenLogprobs]]:
        """Per sequence id, the prompt logprobs this step adds (``prompt_logprob_rows``)."""
        found = prompt_logprob_rows(batch, self.vocab_size)
        if not found.rows:
            return {}
        logits = self.model.compute_logits(hidden[self._tensor(found.rows, torch.int64)])
        targets = self._tensor(found.targets, torch.int64)
        entries = iter(host_logprobs(targets, compute_logprobs(logits, targets, found.k)))
        return {
            seq_id: [keep_top(next(entries), k) for _ in range(count)]
            for seq_id, count, k in found.owners
        }

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """The model over one step's inputs: hidden states [T, hidden]. A decode step whose T is
        a captured bucket replays its CUDA graph (the result is then overwritten by the next
        replay); every other step runs eagerly."""
        if self.graphs is not None:
            hidden = self.graphs.replay(inputs.input_ids, inputs.positions, inputs.context)
            if hidden is not None:
                return hidden
        return self._run_model(inputs.input_ids, inputs.positions, inputs.context)

    def _run_model(
        self, input_ids: torch.Tensor, positions: torch.Tensor, context: ForwardContext
    ) -> torch.Tensor:
        with forward_context(context):
            return self.model(input_ids, positions)

    def prepare(self, batch: list[ScheduledSeq]) -> ModelInputs:
        """The step's inputs. A decode-only batch that fits a CUDA-graph bucket is padded to it
        (``runtime.cuda_graphs`` says how padded rows look); ``sample_indices`` name only the
        rows of real sequences that sample."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_q, cu_k, context_lens, sample_indices = [0], [0], [], []
        pending: list[tuple[int, int]] = []
        reads_cache = False
        for item in batch:
            seq, start, end = item.seq, item.start, item.start + item.num_tokens
            input_ids.extend(seq.token_ids[start:end])
            if input_ids[-1] == PENDING_TOKEN:  # only a last token can be pending
                input_ids[-1] = 0
                pending.append((len(input_ids) - 1, seq.seq_id))
            positions.extend(range(start, end))
            for b in range(start // bs, (end - 1) // bs + 1):
                base = seq.block_table[b] * bs - b * bs
                slots.extend(range(base + max(start, b * bs), base + min(end, (b + 1) * bs)))
            cu_q.append(cu_q[-1] + item.num_tokens)
            cu_k.append(cu_k[-1] + end)
            context_lens.append(end)
            reads_cache |= start > 0
            if item.samples:
                sample_indices.append(cu_q[-1] - 1)
        max_context_len = max(context_lens)
        decode_only = all(item.num_tokens == 1 for item in batch)
        rows = len(batch)
        bucket = self.graphs.bucket(rows) if decode_only and self.graphs is not None else None
        if bucket is not None:
            pad = bucket - rows
            input_ids += [0] * pad
            positions += [0] * pad
            slots += [-1] * pad
            cu_q += range(cu_q[-1] + 1, cu_q[-1] + pad + 1)
            cu_k += [cu_k[-1]] * pad
            context_lens += [0] * pad
            rows = bucket
        tables = array.array("i")
        width = 0
        if reads_cache or decode_only:
            width = max(len(item.seq.block_table) for item in batch)
            for item in batch:
                tables.fromlist(item.seq.block_table)
                tables.fromlist([-1] * (width - len(item.seq.block_table)))
            tables.fromlist([-1] * (width * (rows - len(batch))))
        ints = array.array("i", itertools.chain(slots, cu_q, cu_k, context_lens))
        slot_mapping, cu_seqlens_q, cu_seqlens_k, lens, table = self._tensors(
            ints + tables,
            [len(slots), len(cu_q), len(cu_k), len(context_lens), len(tables)],
            torch.int32,
        )
        longs = array.array("q", itertools.chain(input_ids, positions, sample_indices))
        ids, pos, sample = self._tensors(
            longs, [len(input_ids), len(positions), len(sample_indices)], torch.int64
        )
        context = ForwardContext(
            slot_mapping=slot_mapping,
            cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max(item.num_tokens for item in batch),
            max_seqlen_k=max_context_len,
            context_lens=lens,
            max_context_len=max_context_len,
            block_tables=table.view(rows, width) if width else None,
            decode_only=decode_only,
        )
        return ModelInputs(ids, pos, context, sample, pending)

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.tensor(values, dtype=dtype)
        host = torch.tensor(values, dtype=dtype, pin_memory=True)
        return host.to(self.device, non_blocking=True)

    def _tensors(
        self, values: array.array, sizes: list[int], dtype: torch.dtype
    ) -> tuple[torch.Tensor, ...]:
        """``values`` (an array of ``dtype``'s item type) on the device in one transfer, split
        into views of ``sizes`` elements."""
        host = torch.frombuffer(values, dtype=dtype) if len(values) else torch.empty(0, dtype=dtype)
        if self.device.type != "cpu":
            host = host.pin_memory().to(self.device, non_blocking=True)
        return host.split(sizes)

    # -- CUDA graphs ---------------------------------------------------------------------

    def _capture_graphs(self) -> DecodeGraphs | None:
        """Decode graphs (forward, LM head, sampler) over every bucket up to ``max_num_seqs``;
        None with ``enforce_eager`` or off CUDA."""
        config = self.config
        if config.enforce_eager or self.device.type != "cuda":
            return None
        sizes = capture_sizes(config.max_num_seqs)
        max_blocks = -(-config.max_model_len // self.block_size)
        graphs = DecodeGraphs(
            self._run_model, self.model.compute_logits, sizes, max_blocks, config.max_model_len,
            self.vocab_size, self.device,
        )
        start, used = time.perf_counter(), torch.cuda.memory_allocated(self.device)
        tuned_gemms(self.model).warm_up(self.device)  # no library first initialised in a capture
        graphs.capture()
        logger.info(
            "CUDA graphs: decode batch sizes %s captured in %.1f s (%.2f GiB)",
            sizes,
            time.perf_counter() - start,
            (torch.cuda.memory_allocated(self.device) - used) / 2**30,
        )
        return graphs

    # -- KV cache sizing -----------------------------------------------------------------

    def block_bytes(self) -> int:
        layer = self.attention_layers[0]
        element = torch.empty((), dtype=self.config.kv_cache_torch_dtype).element_size()
        return (
            2
            * len(self.attention_layers)
            * self.block_size
            * layer.num_kv_heads
            * layer.head_dim
            * element
        )

    def _num_kv_blocks(self) -> int:
        config = self.config
        per_seq = -(-config.max_model_len // self.block_size)
        if config.num_gpu_blocks_override is not None:
            num_blocks, source = config.num_gpu_blocks_override, "num_gpu_blocks_override"
        elif config.kv_cache_memory_bytes is not None:
            num_blocks = config.kv_cache_memory_bytes // self.block_bytes()
            source = f"kv_cache_memory_bytes={config.kv_cache_memory_bytes}"
        elif self.device.type == "cuda":
            budget = self._profile_free_memory()
            num_blocks = max(0, budget) // self.block_bytes()
            source = (
                f"{budget / 2**30:.2f} GiB left for the cache at "
                f"gpu_memory_utilization={config.gpu_memory_utilization}"
            )
        else:
            num_blocks = min(
                CPU_KV_CACHE_BYTES // self.block_bytes(), config.max_num_seqs * per_seq
            )
            source = f"the CPU budget of {CPU_KV_CACHE_BYTES / 2**30:.0f} GiB"
        fewest = tp_min(num_blocks)  # every rank holds the same blocks: the smallest cache
        if fewest < num_blocks:
            num_blocks, source = fewest, f"another tensor-parallel rank ({source} here)"
        if num_blocks < per_seq:
            raise ValueError(
                f"KV cache too small: {num_blocks} blocks of {self.block_size} tokens "
                f"({self.block_bytes()} bytes each, from {source}) hold "
                f"{num_blocks * self.block_size} "
                f"tokens, but one sequence of max_model_len={config.max_model_len} tokens needs "
                f"{per_seq} blocks; lower max_model_len or give the cache more memory"
            )
        return num_blocks

    @torch.inference_mode()
    def _profile_free_memory(self) -> int:
        """Bytes the KV cache may take: the device's share (``gpu_memory_utilization``) minus what
        is in use after the weights, minus the peak activations of a full-budget forward."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.profile_run()
        torch.cuda.synchronize(self.device)
        peak, current = (
            torch.cuda.max_memory_allocated(self.device),
            torch.cuda.memory_allocated(self.device),
        )
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        return int(total * self.config.gpu_memory_utilization) - (total - free) - (peak - current)

    def profile_run(self) -> None:
        """A forward of ``max_num_batched_tokens`` tokens (sequences of at most ``max_model_len``)
        plus logits, sampling with every setting and top-20 logprobs for up to ``max_num_seqs``
        of them, with no KV cache."""
        config = self.config
        tokens = config.max_num_batched_tokens
        lengths = [
            min(config.max_model_len, tokens - start)
            for start in range(0, tokens, config.max_model_len)
        ]
        cu = [0]
        for length in lengths:
            cu.append(cu[-1] + length)
        cu_tensor = self._tensor(cu, torch.int32)
        context = ForwardContext(
            slot_mapping=self._tensor([-1] * tokens, torch.int32),
            cu_seqlens_q=cu_tensor,
            cu_seqlens_k=cu_tensor,
            max_seqlen_q=max(lengths),
            max_seqlen_k=max(lengths),
            context_lens=self._tensor(lengths, torch.int32),
            max_context_len=max(lengths),
            block_tables=None,
            decode_only=False,
        )
        positions = torch.cat([torch.arange(length) for length in lengths]).to(self.device)
        rows = min(config.max_num_seqs, tokens)
        inputs = ModelInputs(
            torch.zeros(tokens, dtype=torch.int64, device=self.device),
            positions,
            context,
            torch.arange(tokens - rows, tokens, device=self.device),
            [],
        )
        hidden = self.forward(inputs)
        logits = self.model.compute_logits(hidden[inputs.sample_indices])
        ones = torch.ones(rows, device=self.device)
        no_tokens = torch.full((rows, 1), self.vocab_size, device=self.device)
        packed = torch.zeros(rows, ROW_WORDS, dtype=torch.int32, device=self.device)
        # every setting on: penalties, min_p, top-k/top-p sorting
        worst_case = unpack(packed, SamplingMode(False, True, True))
        worst_case.temperatures.fill_(1.0)
        worst_case.top_k.fill_(self.vocab_size - 1)
        worst_case.top_p.fill_(0.9)
        worst_case.min_p.fill_(0.01)
        worst_case.presence_penalties = worst_case.frequency_penalties = ones
        worst_case.repetition_penalties = ones
        worst_case.prompt_tokens = worst_case.output_tokens = no_tokens
        compute_logprobs(logits, sample(logits, worst_case), 20)
