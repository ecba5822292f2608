"""The GEMM problems a decoder model issues, derived from its Hugging Face config.

Per tensor-parallel shard, as the runtime's layers split them: column-parallel ``qkv_proj``
(query heads and KV heads split over ranks, KV heads replicated when fewer than ranks) and
``gate_up_proj``; row-parallel ``o_proj`` and ``down_proj``; a vocab-parallel ``lm_head``, which
stays in the model dtype (fp8 checkpoints keep it unquantized) and sees one token per sequence.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def _divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size {parts}")
    return total // parts


def layer_problems(config: dict[str, Any], tp: int, tokens: int, dtype: torch.dtype,
                   outdtype: torch.dtype) -> list[tuple[str, GemmProblem, int]]:
    """``(layer pattern, problem, calls per forward)`` for one forward over ``tokens`` tokens
    (decoder layers) of a model at tensor-parallel size ``tp``; the LM head is not included."""
    arch = (config.get("architectures") or ["LlamaForCausalLM"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    intermediate = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    qkv_bias = arch == "Qwen2ForCausalLM" or bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))

    q_heads = _divide(heads, tp, "num_attention_heads")
    if kv_heads >= tp:
        kv_per_rank = _divide(kv_heads, tp, "num_key_value_heads")
    elif tp % kv_heads:
        raise ValueError(f"tensor-parallel size {tp} is not a multiple of num_key_value_heads {kv_heads}")
    else:
        kv_per_rank = 1  # each KV head replicated over tp // kv_heads ranks
    inter = _divide(intermediate, tp, "intermediate_size")

    def problem(m: int, k: int, bias: bool) -> GemmProblem:
        return GemmProblem.for_linear(m, tokens, k, bias=bias, dtype=dtype, outdtype=outdtype)

    prefix = "model.layers.*."
    return [
        (prefix + "self_attn.qkv_proj", problem((q_heads + 2 * kv_per_rank) * head_dim, hidden, qkv_bias), layers),
        (prefix + "self_attn.o_proj", problem(hidden, q_heads * head_dim, bool(config.get("attention_bias", False))), layers),
        (prefix + "mlp.gate_up_proj", problem(2 * inter, hidden, mlp_bias), layers),
        (prefix + "mlp.down_proj", problem(hidden, inter, mlp_bias), layers),
    ]


def lm_head_problem(config: dict[str, Any], tp: int, sequences: int, model_dtype: torch.dtype) -> GemmProblem:
    """The vocab-parallel LM head's problem for ``sequences`` rows (one token per sequence)."""
    vocab = config["vocab_size"]
    shard = -(-vocab // tp)
    return GemmProblem.for_linear(shard, sequences, config["hidden_size"],
                                  dtype=model_dtype, outdtype=model_dtype)


def problems_from_config(
    config: dict[str, Any],
    tp: int = 1,
    batch_sizes: Iterable[int] = (1,),
    prefill_tokens: Iterable[int] = (),
    dtype: torch.dtype = torch.float8_e4m3fn,
    outdtype: torch.dtype = torch.bfloat16,
    model_dtype: torch.dtype = torch.bfloat16,
    lm_head: bool = True,
) -> list[ShapeRow]:
    """Shape rows for decode steps at each batch size and prefill chunks of each token count,
    one forward each; the LM head (when ``lm_head``) at each batch size."""
    if tp < 1:
        raise ValueError(f"tensor-parallel size must be >= 1, got {tp}")
    rows: dict[GemmProblem, ShapeRow] = {}

    def add(layer: str, problem: GemmProblem, count: int) -> None:
        old = rows.get(problem)
        if old is None:
            rows[problem] = ShapeRow(problem, count, (layer,))
        else:
            layers = old.layers + ((layer,) if layer not in old.layers else ())
            rows[problem] = ShapeRow(problem, old.count + count, layers)

    for tokens in sorted(set(batch_sizes) | set(prefill_tokens)):
        for layer, problem, count in layer_problems(config, tp, tokens, dtype, outdtype):
            add(layer, problem, count)
    if lm_head:
        for batch in sorted(set(batch_sizes)):
            add("lm_head", lm_head_problem(config, tp, batch, model_dtype), 1)
    return list(rows.values())
