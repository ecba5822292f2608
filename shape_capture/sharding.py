"""How tensor parallelism splits a decoder model over ranks: one rule, by which the runtime's
layers build their shards and shape capture derives each shard's GEMM problems.

Column-parallel layers (``qkv_proj``, ``gate_up_proj``) split their output features, row-parallel
ones (``o_proj``, ``down_proj``) their input features, into equal parts. Attention is split by
heads: the query heads, and the KV heads when there are at least as many as ranks; with fewer,
each KV head is replicated on ``tp / num_kv_heads`` consecutive ranks. The vocabulary (embedding
and LM head) is split into ``ceil(vocab / tp)`` rows per rank, the last rank's tail padded.
"""

from __future__ import annotations

from dataclasses import dataclass


def divide(total: int, parts: int, what: str) -> int:
    """``total / parts`` where it divides exactly; otherwise an error naming ``what``."""
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size {parts}")
    return total // parts


@dataclass(frozen=True)
class HeadShard:
    """One rank's attention heads."""

    num_heads: int  # query heads
    num_kv_heads: int  # KV heads
    kv_replicas: int  # ranks that hold each KV head (1: the KV heads are split like the queries)

    def qkv_sizes(self, head_dim: int) -> list[int]:
        """The rank's q, k and v output features: its parts of the fused ``qkv_proj``."""
        kv = self.num_kv_heads * head_dim
        return [self.num_heads * head_dim, kv, kv]


def head_shard(num_heads: int, num_kv_heads: int, tp: int) -> HeadShard:
    """The heads of each of ``tp`` ranks; ValueError where they do not split evenly."""
    heads = divide(num_heads, tp, "num_attention_heads")
    if num_kv_heads >= tp:
        return HeadShard(heads, divide(num_kv_heads, tp, "num_key_value_heads"), 1)
    if tp % num_kv_heads:
        raise ValueError(
            f"tensor-parallel size {tp} is not a multiple of num_key_value_heads {num_kv_heads}"
        )
    return HeadShard(heads, 1, tp // num_kv_heads)


def vocab_shard(vocab_size: int, tp: int) -> int:
    """Rows of the embedding table (and LM head) on each of ``tp`` ranks."""
    return -(-vocab_size // tp)
