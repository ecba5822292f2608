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
from dataclasses import dataclass, field

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.sequence import PENDING_TOKEN, Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSeq:
    """``seq`` computes tokens ``start .. start + num_tokens`` this step; ``samples``: the step
    reaches the sequence's last token (as scheduled), so its logits give the next token."""

    seq: Sequence
    start: int
    num_tokens: int
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", self.start + self.num_tokens == self.seq.num_tokens)


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
            if self._at_limit(seq):
                i += 1
                continue
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
        return self.resolve(batch, self.launched(batch), token_ids)

    def launched(self, batch: list[ScheduledSeq]) -> list[int]:
        """The batch is queued on the device: its tokens count as computed, and each sampling
        sequence gets a ``PENDING_TOKEN``; their indices, in batch order of the samplers (for
        :meth:`resolve`)."""
        pending = []
        for item in batch:
            item.seq.num_computed_tokens += item.num_tokens
            if item.samples:
                pending.append(item.seq.append_pending())
        return pending

    def resolve(
        self, batch: list[ScheduledSeq], pending: list[int], token_ids: list[int]
    ) -> list[Sequence]:
        """The launched ``batch``'s sampled ``token_ids`` replace its pending tokens; full blocks
        join the prefix cache; stop rules apply. A sequence that finished meanwhile (an abort,
        or a stop found while this step ran) keeps none of this step's tokens. Returns the
        sequences that finished."""
        finished = []
        sampled = iter(zip(pending, token_ids))
        for item in batch:
            seq = item.seq
            index, token = next(sampled) if item.samples else (-1, -1)
            if seq.is_finished:
                continue
            if item.samples:
                seq.resolve(index, token)
            self.block_manager.cache_full_blocks(seq)
            if not item.samples:
                continue
            reason, stop_reason = self._stop_reason(seq, token, index + 1)
            if reason is not None:
                del seq.token_ids[index + 1:]  # tokens a later step was launched with
                self.finish(seq, reason, stop_reason)
                finished.append(seq)
        return finished

    def finish(
        self, seq: Sequence, reason: str, stop_reason: int | str | None = None
    ) -> None:
        """End a sequence (queued, running, or never queued) and release its blocks; a pending
        last token (a step in flight sampled it) is dropped."""
        if seq.token_ids and seq.token_ids[-1] == PENDING_TOKEN:
            seq.token_ids.pop()
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

    def _stop_reason(
        self, seq: Sequence, token: int, num_tokens: int
    ) -> tuple[str | None, int | None]:
        """vLLM's finish and stop reasons for the sequence's first ``num_tokens`` tokens, the
        last being ``token``: ("stop", token) for a stop token, ("stop", None) for EOS,
        ("length", None) at the length limits; stop tokens count after ``min_tokens``."""
        params = seq.params
        num_outputs = num_tokens - seq.num_prompt_tokens
        if num_outputs > params.min_tokens:
            if token in params.stop_token_ids:
                return "stop", token
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop", None
        if params.max_tokens is not None and num_outputs >= params.max_tokens:
            return "length", None
        if num_tokens >= self.max_model_len:
            return "length", None
        return None, None

    def _at_limit(self, seq: Sequence) -> bool:
        """The sequence's last token is pending (a step in flight sampled it) and it will finish
        on length whatever that token is: nothing more to compute."""
        if not seq.token_ids or seq.token_ids[-1] != PENDING_TOKEN:
            return False
        limit = seq.params.max_tokens
        return (limit is not None and seq.num_output_tokens >= limit) or (
            seq.num_tokens >= self.max_model_len)
