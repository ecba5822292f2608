"""Benchmarks of big models on a CPU: their size, and the warning shown before minutes pass."""
from __future__ import annotations

import logging

from solidx.shape_capture.model_args import ModelArgs
from solidx.shape_capture.presets import load_model_config

logger = logging.getLogger(__name__)

SLOW_ON_CPU_PARAMETERS = 1_000_000_000
"""Above this many parameters a CPU run takes minutes (Llama-3-8B's dummy weights: 5+ min)."""


def parameter_count(args: ModelArgs) -> int:
    """The weights of the decoder layers, the embedding and the LM head (norms aside)."""
    h, kv = args.hidden_size, args.num_kv_heads * args.head_dim
    attention = h * args.num_heads * args.head_dim * 2 + h * kv * 2
    mlp = 3 * h * args.intermediate_size
    heads = 1 if args.tie_word_embeddings else 2
    return args.num_layers * (attention + mlp) + heads * args.vocab_size * h


def slow_on_cpu(model: str) -> int | None:
    """The parameter count of ``model`` when a CPU run of it takes minutes, else None."""
    count = parameter_count(ModelArgs.from_hf(load_model_config(model)))
    return count if count > SLOW_ON_CPU_PARAMETERS else None


def warn_if_slow_on_cpu(model: str) -> None:
    """A warning, before loading, that ``model`` takes minutes on a CPU."""
    count = slow_on_cpu(model)
    if count is not None:
        logger.warning("%s has %.1f G parameters: on a CPU, building it takes minutes and "
                       "decoding runs at a few tokens/s at best", model, count / 1e9)
