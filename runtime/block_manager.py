"""The paged KV cache's bookkeeping: which blocks each sequence holds, reference counts, and the
prefix cache.

A block holds ``block_size`` consecutive tokens of one sequence. With prefix caching, a block
that became full of computed tokens is registered under the chained hash of its tokens
(``hash(previous block's hash, tokens)``) and keeps its contents after its last owner frees it,
until the block is reused; a new sequence whose leading blocks hash and compare equal, token for
token, shares them (its reference count rises) instead of recomputing them. Free blocks are
reused least recently freed first; a sequence frees its blocks last to first, so a prefix
outlives its tail.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from solidx.runtime.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


def block_hash(parent: bytes | None, token_ids: list[int] | tuple[int, ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False
    ) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks equal to ``seq``'s leading full blocks, leaving at least its last token
        to compute (its logits are needed). Changes nothing."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_id = self.cached.get(self._hash_of(seq, i))
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(
        self, seq: Sequence, num_new_tokens: int, prefix: list[int] | None = None
    ) -> bool:
        """Whether ``seq`` can take blocks for ``num_new_tokens`` more computed tokens (after
        sharing ``prefix`` blocks from ``match_prefix``, when it holds none yet)."""
        needed = self._new_blocks(seq, num_new_tokens, prefix)
        reclaimed = sum(1 for b in prefix or () if self.blocks[b].ref_count == 0)
        return needed <= self.num_free_blocks - reclaimed

    def allocate(self, seq: Sequence, num_new_tokens: int, prefix: list[int] | None = None) -> None:
        """Share ``prefix`` (a fresh sequence's cached blocks; its computed tokens start after
        them) and add blocks until ``num_computed_tokens + num_new_tokens`` tokens fit."""
        if not seq.block_table:
            seq.num_cached_tokens = 0
        if prefix:
            if seq.block_table:
                raise RuntimeError(
                    f"{seq} already holds blocks; a prefix is shared only at admission"
                )
            for block_id in prefix:
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    del self.free_blocks[block_id]
                block.ref_count += 1
                seq.block_table.append(block_id)
            seq.num_cached_blocks = len(prefix)
            seq.num_computed_tokens = seq.num_cached_tokens = len(prefix) * self.block_size
        needed = self._new_blocks(seq, num_new_tokens, None)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"{needed} blocks needed, {self.num_free_blocks} free: call can_allocate first"
            )
        for _ in range(needed):
            block_id, _ = self.free_blocks.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None:
                if self.cached.get(block.hash) == block_id:
                    del self.cached[block.hash]
                block.hash, block.token_ids = None, ()
            block.ref_count = 1
            seq.block_table.append(block_id)

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq``; it keeps its tokens and will recompute them."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = seq.num_cached_blocks = 0

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Offer ``seq``'s blocks that are now full of computed tokens to the prefix cache (a block
        whose hash is already cached elsewhere stays private)."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(seq.num_cached_blocks, full):
            block = self.blocks[seq.block_table[i]]
            digest = self._hash_of(seq, i)
            if block.hash is None and digest not in self.cached:
                block.hash = digest
                block.token_ids = tuple(
                    seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
                )
                self.cached[digest] = block.block_id
        seq.num_cached_blocks = max(seq.num_cached_blocks, full)

    def _hash_of(self, seq: Sequence, index: int) -> bytes:
        """The chained hash of ``seq``'s full block ``index`` (memoized on the sequence)."""
        while len(seq.block_hashes) <= index:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            seq.block_hashes.append(
                block_hash(parent, seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            )
        return seq.block_hashes[index]

    def _new_blocks(self, seq: Sequence, num_new_tokens: int, prefix: list[int] | None) -> int:
        computed = len(prefix) * self.block_size if prefix else seq.num_computed_tokens
        held = len(prefix) if prefix else len(seq.block_table)
        return max(0, self.blocks_needed(computed + num_new_tokens) - held)
