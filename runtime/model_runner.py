"""The model runner: builds each step's input tensors and attention metadata from the scheduled
batch, owns the paged KV cache, runs the model and samples.

The KV cache is one allocation ``[2, layers, blocks, block_size, kv_heads, head_dim]``; layer i's
Attention gets the views ``[0, i]`` (keys) and ``[1, i]`` (values). Its size comes from the free
GPU memory after a profiling forward of ``max_num_batched_tokens`` tokens (times
``gpu_memory_utilization``), or from ``kv_cache_memory_bytes``, or on CPU from a 4 GiB budget
capped at what ``max_num_seqs`` sequences of ``max_model_len`` tokens can use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from runtime.config import CPU_KV_CACHE_BYTES, Config
from runtime.context import ForwardContext, forward_context
from runtime.layers.attention import Attention
from runtime.layers.sampler import Sampler, SamplingTensors
from runtime.loader import load_model
from runtime.scheduler import ScheduledSeq
from runtime.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class ModelInputs:
    """One step's model inputs: tokens [T] and their positions [T] (int64), the attention
    context, and the rows of the hidden states whose logits are sampled."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    context: ForwardContext
    sample_indices: torch.Tensor


class ModelRunner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = config.torch_device
        self.block_size = config.block_size
        self.model = load_model(config)
        self.vocab_size = self.model.args.vocab_size
        self.sampler = Sampler(torch.Generator(self.device).manual_seed(config.seed))
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.num_kv_blocks = self._num_kv_blocks()
        layer = self.attention_layers[0]
        self.kv_cache = torch.zeros(
            2,
            len(self.attention_layers),
            self.num_kv_blocks,
            self.block_size,
            layer.num_kv_heads,
            layer.head_dim,
            dtype=config.torch_dtype,
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

    # -- one step -------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> tuple[list[int], list[dict[int, float] | None]]:
        """Compute the batch's tokens; for each entry that ``samples`` (in order), the next token
        and, where its request asks for logprobs, their dict (else None)."""
        inputs = self.prepare(batch)
        hidden = self.forward(inputs)
        logits = self.model.compute_logits(hidden[inputs.sample_indices])
        seqs = [item.seq for item in batch if item.samples]
        token_ids = self.sampler(logits, self.sampling_tensors(seqs))
        tokens = token_ids.tolist()
        return tokens, self._logprobs(logits, tokens, seqs)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """The model over one step's inputs: hidden states [T, hidden]."""
        with forward_context(inputs.context):
            return self.model(inputs.input_ids, inputs.positions)

    def prepare(self, batch: list[ScheduledSeq]) -> ModelInputs:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_q, cu_k, context_lens, sample_indices = [0], [0], [], []
        reads_cache = False
        for item in batch:
            seq, start, end = item.seq, item.start, item.start + item.num_tokens
            input_ids.extend(seq.token_ids[start:end])
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
        decode_only = all(item.num_tokens == 1 for item in batch)
        block_tables = None
        if reads_cache or decode_only:
            width = max(len(item.seq.block_table) for item in batch)
            block_tables = self._tensor(
                [
                    item.seq.block_table + [-1] * (width - len(item.seq.block_table))
                    for item in batch
                ],
                torch.int32,
            )
        context = ForwardContext(
            slot_mapping=self._tensor(slots, torch.int32),
            cu_seqlens_q=self._tensor(cu_q, torch.int32),
            cu_seqlens_k=self._tensor(cu_k, torch.int32),
            max_seqlen_q=max(item.num_tokens for item in batch),
            max_seqlen_k=max(context_lens),
            context_lens=self._tensor(context_lens, torch.int32),
            max_context_len=max(context_lens),
            block_tables=block_tables,
            decode_only=decode_only,
        )
        return ModelInputs(
            self._tensor(input_ids, torch.int64),
            self._tensor(positions, torch.int64),
            context,
            self._tensor(sample_indices, torch.int64),
        )

    def sampling_tensors(self, seqs: list[Sequence]) -> SamplingTensors:
        """Per-row sampling settings; gives each seeded request its generator on first use."""
        temperatures, top_k, top_p, generators = [], [], [], []
        for seq in seqs:
            params = seq.params
            temperatures.append(params.temperature)
            top_k.append(params.top_k if params.top_k > 0 else self.vocab_size)
            top_p.append(params.top_p)
            if params.seed is not None and seq.generator is None:
                seq.generator = torch.Generator(self.device).manual_seed(params.seed)
            generators.append(seq.generator)
        return SamplingTensors(
            temperatures=self._tensor(temperatures, torch.float32),
            top_k=self._tensor(top_k, torch.int64),
            top_p=self._tensor(top_p, torch.float32),
            generators=generators,
            all_greedy=all(t == 0 for t in temperatures),
            use_top_k_top_p=any(k < self.vocab_size for k in top_k) or any(p < 1.0 for p in top_p),
        )

    def _logprobs(
        self, logits: torch.Tensor, tokens: list[int], seqs: list[Sequence]
    ) -> list[dict[int, float] | None]:
        wanted = [seq.params.logprobs for seq in seqs]
        if all(n is None for n in wanted):
            return [None] * len(seqs)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        result: list[dict[int, float] | None] = []
        for row, (n, token) in enumerate(zip(wanted, tokens)):
            if n is None:
                result.append(None)
                continue
            values, ids = logprobs[row].topk(min(n, self.vocab_size))
            entry = dict(zip(ids.tolist(), values.tolist()))
            entry[token] = logprobs[row, token].item()
            result.append(entry)
        return result

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        host = torch.tensor(values, dtype=dtype, device="cpu")
        if self.device.type == "cpu":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    # -- KV cache sizing -----------------------------------------------------------------

    def block_bytes(self) -> int:
        layer = self.attention_layers[0]
        element = torch.empty((), dtype=self.config.torch_dtype).element_size()
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
        plus logits and sampling for up to ``max_num_seqs`` of them, with no KV cache."""
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
        )
        hidden = self.forward(inputs)
        logits = self.model.compute_logits(hidden[inputs.sample_indices])
        worst_case = SamplingTensors(  # sorting for top-k/top-p takes the most memory
            temperatures=torch.ones(rows, device=self.device),
            top_k=torch.full((rows,), self.vocab_size - 1, device=self.device),
            top_p=torch.full((rows,), 0.9, device=self.device),
            generators=[None] * rows,
            all_greedy=False,
            use_top_k_top_p=True,
        )
        self.sampler(logits, worst_case)
