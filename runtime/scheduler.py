"""Continuous batching under a token budget (CPU only).

Every step gives each running sequence, oldest first, as many of its not-yet-computed tokens as
the budget (``max_num_batched_tokens``) allows: the rest of a prompt, a chunk of it, or the one
token a decoding sequence just produced. There is no separate prefill or decode phase. Waiting
sequences are admitted while budget, ``max_num_seqs`` and free blocks allow. When the KV cache
runs out, the newest running sequence is preempted: its blocks are freed and it returns to the
front of the queue to recompute its tokens later (greedy output is unchanged by this).

The ``n`` sequences of one request are queued together; sequence 0 goes first, and the others
wait until it has computed its prompt, then share its full prompt blocks (reference counts,
as the prefix cache does) and compute only the rest. A request that asks for prompt logprobs
computes its whole prompt (no sharing, no prefix cache).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSeq:
    """``seq`` computes tokens ``start .. start + num_tokens`` this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """The step reaches the sequence's last token, so its logits give the next token."""
        return self.start + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(
        self, config: Config, block_manager: BlockManager, eos_token_ids: frozenset[int]
    ) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = config.max_model_len
        self.block_manager = block_manager
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        batch: list[ScheduledSeq] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.can_allocate(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                break
            self.block_manager.allocate(seq, n)
            batch.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
            i += 1
        while (
            not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs
        ):
            seq = self.waiting[0]
            prefix = self._prefix(seq)
            if prefix is None:
                break
            n = min(seq.num_tokens - len(prefix) * self.block_manager.block_size, budget)
            if not self.block_manager.can_allocate(seq, n, prefix):
                break
            self.block_manager.allocate(seq, n, prefix)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        return batch

    def postprocess(self, batch: list[ScheduledSeq], token_ids: list[int]) -> list[Sequence]:
        """Advance each scheduled sequence; ``token_ids`` holds one sampled token for each entry
        that ``samples``, in batch order. Returns the sequences that finished."""
        sampled = iter(token_ids)
        finished = []
        for item in batch:
            seq = item.seq
            seq.num_computed_tokens += item.num_tokens
            self.block_manager.cache_full_blocks(seq)
            if not item.samples:
                continue
            token = next(sampled)
            seq.append_token(token)
            reason, stop_reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason, stop_reason)
                finished.append(seq)
        return finished

    def finish(
        self, seq: Sequence, reason: str, stop_reason: int | str | None = None
    ) -> None:
        """End a sequence (queued, running, or never queued) and release its blocks."""
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        seq.metrics.finished_time = time.perf_counter()

    def _prefix(self, seq: Sequence) -> list[int] | None:
        """The blocks ``seq`` shares at admission: its parent's computed full prompt blocks, or
        the prefix cache's; None while its running parent still computes the prompt."""
        if seq.params.prompt_logprobs is not None:
            return []
        parent = seq.parent
        if parent is None or parent.status != SequenceStatus.RUNNING:
            return self.block_manager.match_prefix(seq)
        if parent.num_computed_tokens < parent.num_prompt_tokens:
            return None
        shared = (seq.num_prompt_tokens - 1) // self.block_manager.block_size
        return parent.block_table[:shared]

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _stop_reason(self, seq: Sequence, token: int) -> tuple[str | None, int | None]:
        """vLLM's finish and stop reasons: ("stop", token) for a stop token, ("stop", None) for
        EOS, ("length", None) at the length limits; stop tokens count after ``min_tokens``."""
        params = seq.params
        if seq.num_output_tokens > params.min_tokens:
            if token in params.stop_token_ids:
                return "stop", token
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop", None
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length", None
        if seq.num_tokens >= self.max_model_len:
            return "length", None
        return None, None
