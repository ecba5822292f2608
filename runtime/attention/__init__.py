"""Attention for the runtime: KV-cache writes, varlen prefill and paged decode.

This docstring is the contract every implementation keeps (the torch reference in
``reference.py`` is its oracle; ``selector.py`` picks the implementation per call).

Shapes: ``q`` is ``[Tq, Hq, D]``, ``k``/``v`` are ``[Tk, Hkv, D]``, contiguous in the head
dimension, with ``Hq`` a multiple of ``Hkv`` (grouped-query attention: query head ``h`` reads KV
head ``h // (Hq // Hkv)``). The paged KV cache is ``[num_blocks, block_size, Hkv, D]``; slot
``s = block_id * block_size + offset``. An fp8 cache stores ``value / scale`` (``k_scale``,
``v_scale``) saturated to the e4m3 range, a cache in the model dtype the value itself;
attention reads ``stored * scale``. Index tensors (``slot_mapping``, ``cu_seqlens_*``,
``block_tables``, ``context_lens``) are int32 on the device of ``q``. Outputs have the shape
and dtype of ``q``.

* ``store_kvcache(k, v, k_cache, v_cache, slot_mapping, k_scale=1, v_scale=1)``: token ``t``
  of ``k``/``v`` goes to slot ``slot_mapping[t]``; ``-1`` skips the token.
* ``prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
  k_cache=None, v_cache=None, block_tables=None, k_scale=1, v_scale=1)``: varlen causal
  attention. Sequence ``i`` has the queries ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]`` and
  ``Lk_i = cu_seqlens_k[i + 1] - cu_seqlens_k[i] >= Lq_i`` keys; queries are aligned to the
  end of the keys, so query ``j`` sees keys ``0 .. Lk_i - Lq_i + j``. Without
  ``block_tables`` the keys are the rows ``cu_seqlens_k[i]:cu_seqlens_k[i + 1]`` of ``k``/``v``;
  with it, they are the first ``Lk_i`` tokens of the paged cache through ``block_tables[i]``
  (``[B, max_blocks]``, padded with -1), which must already hold this step's tokens.
  ``max_seqlen_q``/``max_seqlen_k`` bound the per-sequence lengths; scores are multiplied by
  ``scale`` before the softmax.
* ``decode_attention(q, k_cache, v_cache, block_tables, context_lens, max_context_len, scale,
  k_scale=1, v_scale=1)``: one query per sequence (``q`` is ``[B, Hq, D]``) over its
  ``context_lens[b]`` cached tokens, all visible; a context length of 0 gives zeros.
  ``max_context_len`` is a host-side upper bound of ``context_lens`` (fixed at CUDA-graph
  capture); the kernels' grid and buffers do not grow with it and their work follows
  ``context_lens`` (``split_kv``).
"""
from __future__ import annotations

from solidx.runtime.attention.selector import (
    KERNEL_COUNTS,
    decode_attention,
    prefill_attention,
    store_kvcache,
)

__all__ = ["KERNEL_COUNTS", "decode_attention", "prefill_attention", "store_kvcache"]
