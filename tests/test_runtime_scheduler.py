"""Scheduler and block manager invariants under thousands of random steps (hypothesis state
machine): reference counts match the block tables, free blocks are exactly the unreferenced
ones, every token a step reads from the cache is the one its sequence put there (so no block is
shared wrongly or reused while held), every sequence makes progress and finishes cleanly."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.scheduler import Scheduler
from solidx.runtime.sequence import Sequence, SequenceStatus

MAX_MODEL_LEN = 24
EOS = 9
BASES = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0, 0], [5, 5, 5, 5, 5]]


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        block_size=st.sampled_from([1, 2, 4, 8]),
        extra_blocks=st.integers(0, 10),
        budget=st.integers(1, 20),
        max_seqs=st.integers(1, 5),
        prefix_caching=st.booleans(),
    )
    def setup(
        self, block_size: int, extra_blocks: int, budget: int, max_seqs: int, prefix_caching: bool
    ) -> None:
        config = Config(
            "tiny-llama",
            load_format="dummy",
            max_model_len=MAX_MODEL_LEN,
            max_num_seqs=max_seqs,
            max_num_batched_tokens=max(budget, max_seqs),
            block_size=block_size,
            enable_prefix_caching=prefix_caching,
        )
        num_blocks = -(-MAX_MODEL_LEN // block_size) + extra_blocks
        self.block_size = block_size
        self.blocks = BlockManager(num_blocks, block_size, prefix_caching)
        self.scheduler = Scheduler(config, self.blocks, frozenset({EOS}))
        self.kv: dict[int, tuple[int, ...]] = {}  # cache slot -> the token prefix its K/V encode
        self.seqs: list[Sequence] = []

    @rule(
        base=st.sampled_from(BASES + [[]]),
        suffix=st.lists(st.integers(0, 9), max_size=12),
        max_tokens=st.integers(1, 12),
        ignore_eos=st.booleans(),
    )
    def add_request(
        self, base: list[int], suffix: list[int], max_tokens: int, ignore_eos: bool
    ) -> None:
        prompt = (base + suffix)[:MAX_MODEL_LEN] or [0]
        seq = Sequence(
            prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        )
        self.scheduler.add(seq)
        self.seqs.append(seq)

    @precondition(lambda self: self.scheduler.has_unfinished())
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        batch = self.scheduler.schedule()
        assert batch, "unfinished sequences but nothing scheduled"
        assert sum(item.num_tokens for item in batch) <= self.scheduler.max_num_batched_tokens
        assert len({item.seq.seq_id for item in batch}) == len(batch)
        for item in batch:  # the forward writes every new token's K/V first ...
            for pos in range(item.start, item.start + item.num_tokens):
                self.kv[self._slot(item.seq, pos)] = tuple(item.seq.token_ids[: pos + 1])
        for item in batch:  # ... then attention reads the whole context back
            seq = item.seq
            for pos in range(item.start + item.num_tokens):
                assert self.kv.get(self._slot(seq, pos)) == tuple(seq.token_ids[: pos + 1]), (
                    f"{seq}: position {pos} reads another sequence's K/V"
                )
        sampled = [data.draw(st.integers(0, EOS)) for item in batch if item.samples]
        self.scheduler.postprocess(batch, sampled)

    def _slot(self, seq: Sequence, pos: int) -> int:
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    @invariant()
    def block_accounting(self) -> None:
        if not hasattr(self, "blocks"):
            return
        running = self.scheduler.running
        owners = Counter(b for seq in running for b in seq.block_table)
        for block in self.blocks.blocks:
            assert block.ref_count == owners[block.block_id]
            if block.ref_count > 1:
                assert block.hash is not None, "only cached full blocks may be shared"
        assert set(self.blocks.free_blocks) == {
            b.block_id for b in self.blocks.blocks if b.ref_count == 0
        }
        for digest, block_id in self.blocks.cached.items():
            assert self.blocks.blocks[block_id].hash == digest
        assert len(running) <= self.scheduler.max_num_seqs

    @invariant()
    def sequences(self) -> None:
        for seq in getattr(self, "seqs", []):
            if seq.status == SequenceStatus.RUNNING:
                assert seq in self.scheduler.running
                assert len(set(seq.block_table)) == len(seq.block_table)
                assert len(seq.block_table) >= self.blocks.blocks_needed(seq.num_computed_tokens)
                assert seq.num_computed_tokens < seq.num_tokens
                for i, block_id in enumerate(seq.block_table):
                    block = self.blocks.blocks[block_id]
                    if block.hash is not None:
                        span = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
                        assert block.token_ids == tuple(span)
            else:
                assert seq.block_table == [] and seq not in self.scheduler.running
            if seq.is_finished:
                assert seq.finish_reason in ("stop", "length")
                assert seq.num_output_tokens <= seq.params.max_tokens
                assert seq.num_tokens <= MAX_MODEL_LEN or seq.num_output_tokens == 1


SchedulerMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None
)
TestScheduler = SchedulerMachine.TestCase
