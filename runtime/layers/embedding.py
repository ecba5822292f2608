"""Vocab-parallel token embedding and LM head.

Each rank holds ``ceil(vocab / tp)`` consecutive rows of the ``[vocab, hidden]`` table (the last
rank's tail zero-padded). The embedding looks up the ids it owns and sums over ranks; the LM head
computes its slice of the logits through the same GEMM dispatch as every linear layer (layer kind
``lm_head``: recorded, tuned, counted like the others) and gathers them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from solidx.gradlib.operands import GemmOperands
from solidx.runtime.distributed import get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce
from solidx.runtime.layers.linear import GemmDispatch
from solidx.shape_capture.sharding import vocab_shard


class VocabParallelEmbedding(nn.Module):
    def __init__(
        self, num_embeddings: int, embedding_dim: int, params_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.rows_per_rank = vocab_shard(num_embeddings, self.tp_size)
        self.start = self.tp_rank * self.rows_per_rank
        self.end = min(self.start + self.rows_per_rank, num_embeddings)
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, embedding_dim, dtype=params_dtype), requires_grad=False
        )
        self.weight.weight_loader = self.weight_loader

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        expected = (self.num_embeddings, param.shape[1])
        if tuple(loaded.shape) != expected:
            raise ValueError(f"has shape {tuple(loaded.shape)}, expected {expected}")
        rows = self.end - self.start
        param.data[:rows].copy_(loaded[self.start : self.end])
        param.data[rows:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(owned, input_ids - self.start, 0)
        out = F.embedding(local, self.weight) * owned.unsqueeze(-1).to(self.weight.dtype)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """``logits[n, vocab] = hidden[n, H] @ Wᵀ``, dispatched (and recorded) as layer ``lm_head``."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, params_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, params_dtype)
        self.gemm_dispatch = GemmDispatch(self.rows_per_rank, embedding_dim, "lm_head")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        ops = GemmOperands(hidden, self.weight, None, None, None)
        logits = self.gemm_dispatch(ops, hidden.dtype)
        return tp_all_gather(logits, dim=-1)[:, : self.num_embeddings]
