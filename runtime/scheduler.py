"""Continuous batching under a token budget (CPU only).

Every step gives each running sequence, oldest first, as many of its not-yet-computed tokens as
the budget (``max_num_batched_tokens``) allows: the rest of a prompt, a chunk of it, or the one
token a decoding sequence just produced. There is no separate prefill or decode phase. Waiting
sequences are admitted while budget, ``max_num_seqs`` and free blocks allow. When the KV cache
runs out, the newest running sequence is preempted: its blocks are freed and it returns to the
front of the queue to recompute its tokens later (greedy output is unchanged by this).
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
            prefix = self.block_manager.match_prefix(seq)
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
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a running sequence and release its blocks."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.metrics.finished_time = time.perf_counter()

    def abort(self, seq: Sequence) -> None:
        """Drop a waiting or running sequence and release its blocks (finish_reason "abort")."""
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "abort"
        seq.metrics.finished_time = time.perf_counter()

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if token in params.stop_token_ids or (
            not params.ignore_eos and token in self.eos_token_ids
        ):
            return "stop"
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length"
        if seq.num_tokens >= self.max_model_len:
            return "length"
        return None
