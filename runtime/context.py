"""Per-step attention metadata, set by the model runner around each forward and read by the
Attention layers (an explicit context, not loose globals).

For a batch of B sequences whose step computes ``q_len_i`` new tokens after ``k_len_i - q_len_i``
already in the cache (all int32 tensors on the model's device):

- ``slot_mapping`` [T]: cache slot of each new token (``block * block_size + offset``; -1 skips).
- ``cu_seqlens_q`` / ``cu_seqlens_k`` [B+1]: prefix sums of ``q_len_i`` / ``k_len_i``.
- ``block_tables`` [B, max_blocks] (-1 padded): None when no sequence reads earlier context from
  the cache (every step is a whole fresh prompt), so attention may read k/v directly.
- ``context_lens`` [B]: ``k_len_i``.
- ``decode_only``: every sequence computes exactly one token (the paged decode path).
- ``max_context_len``: an upper bound of ``context_lens`` known on the host (CUDA graphs fix it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class ForwardContext:
    slot_mapping: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    context_lens: torch.Tensor
    max_context_len: int
    block_tables: torch.Tensor | None
    decode_only: bool


_current: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError(
            "attention ran outside a forward context (run the model through ModelRunner)"
        )
    return _current


@contextmanager
def forward_context(context: ForwardContext) -> Iterator[ForwardContext]:
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous
