"""The architecture numbers of a decoder model, read once from its Hugging Face config.

Here, beside the presets, because both read them: the runtime builds its model from them (once
per engine: ``Config.model_args``) and shape capture derives a model's GEMM problems from them.
Accepts both config layouts: transformers 4 (``rope_theta`` + ``rope_scaling``) and
transformers 5 (``rope_parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_SIZE = 2**31 - 1  # sizes are indexed with 32-bit integers by the kernels


def _size(hf: dict[str, Any], name: str, source: str, default: int | None = None) -> int:
    """The config field ``name``: a positive integer at most :data:`MAX_SIZE` (ValueError
    naming ``source`` and the field otherwise); ``default`` when absent or null."""
    value = hf.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"{source}: field {name} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{source}: field {name}={value!r} must be an integer in 1..{MAX_SIZE}")
    return value


def _positive(hf: dict[str, Any], name: str, source: str, default: float) -> float:
    value = hf.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{source}: field {name}={value!r} must be a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class ModelArgs:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    hidden_act: str
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> ModelArgs:
        """The numbers of a Hugging Face config; ValueError naming ``source`` and the field for
        a value no model can have (``num_attention_heads=0``, ``num_hidden_layers=-3``, ...)."""
        architecture = (hf.get("architectures") or ["LlamaForCausalLM"])[0]
        heads = _size(hf, "num_attention_heads", source)
        hidden = _size(hf, "hidden_size", source)
        kv_heads = _size(hf, "num_key_value_heads", source, heads)
        if heads % kv_heads:
            raise ValueError(f"{source}: num_attention_heads={heads} is not a multiple of "
                             f"num_key_value_heads={kv_heads}")
        if hf.get("head_dim") is None and hidden % heads:
            raise ValueError(f"{source}: hidden_size={hidden} is not a multiple of "
                             f"num_attention_heads={heads} (and head_dim is not given)")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        theta = _positive({"rope_theta": rope_theta}, "rope_theta", source, 10000.0)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            architecture=architecture,
            vocab_size=_size(hf, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_size(hf, "intermediate_size", source),
            num_layers=_size(hf, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=_size(hf, "head_dim", source, hidden // heads),
            max_position_embeddings=_size(hf, "max_position_embeddings", source, 2048),
            rms_norm_eps=_positive(hf, "rms_norm_eps", source, 1e-6),
            rope_theta=theta,
            rope_scaling=None if rope_type == "default" else rope,
            hidden_act=str(hf.get("hidden_act", "silu")),
            qkv_bias=architecture == "Qwen2ForCausalLM" or attention_bias,
            o_proj_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
