"""Attention for the runtime: KV-cache writes, varlen prefill and paged decode (ATTENTION_API.md)."""
from __future__ import annotations

from solidx.runtime.attention.selector import (
    KERNEL_COUNTS,
    decode_attention,
    prefill_attention,
    store_kvcache,
)

__all__ = ["KERNEL_COUNTS", "decode_attention", "prefill_attention", "store_kvcache"]
