"""The GEMM problems a decoder model issues, derived from its Hugging Face config.

Per tensor-parallel shard, by the rules the runtime's layers split by (``sharding``):
column-parallel ``qkv_proj`` (query heads and KV heads split over ranks, KV heads replicated when
fewer than ranks) and ``gate_up_proj``; row-parallel ``o_proj`` and ``down_proj``; a
vocab-parallel ``lm_head``, which stays in the model dtype (fp8 checkpoints keep it unquantized)
and sees one token per sequence.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow
from solidx.shape_capture.model_args import ModelArgs
from solidx.shape_capture.sharding import divide, head_shard, vocab_shard

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def layer_problems(
    args: ModelArgs, tp: int, tokens: int, dtype: torch.dtype, outdtype: torch.dtype
) -> list[tuple[str, GemmProblem, int]]:
    """``(layer pattern, problem, calls per forward)`` for one forward over ``tokens`` tokens
    (decoder layers) of a model at tensor-parallel size ``tp``; the LM head is not included."""
    hidden, layers = args.hidden_size, args.num_layers
    qkv = head_shard(args.num_heads, args.num_kv_heads, tp).qkv_sizes(args.head_dim)
    inter = divide(args.intermediate_size, tp, "intermediate_size")

    def problem(m: int, k: int, bias: bool) -> GemmProblem:
        return GemmProblem.for_linear(m, tokens, k, bias=bias, dtype=dtype, outdtype=outdtype)

    prefix = "model.layers.*."
    return [
        (prefix + "self_attn.qkv_proj", problem(sum(qkv), hidden, args.qkv_bias), layers),
        (prefix + "self_attn.o_proj", problem(hidden, qkv[0], args.o_proj_bias), layers),
        (prefix + "mlp.gate_up_proj", problem(2 * inter, hidden, args.mlp_bias), layers),
        (prefix + "mlp.down_proj", problem(hidden, inter, args.mlp_bias), layers),
    ]


def lm_head_problem(
    args: ModelArgs, tp: int, sequences: int, model_dtype: torch.dtype
) -> GemmProblem:
    """The vocab-parallel LM head's problem for ``sequences`` rows (one token per sequence)."""
    rows = vocab_shard(args.vocab_size, tp)
    return GemmProblem.for_linear(
        rows, sequences, args.hidden_size, dtype=model_dtype, outdtype=model_dtype
    )


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
    args = ModelArgs.from_hf(config)
    if args.architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {args.architecture!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    rows: dict[GemmProblem, ShapeRow] = {}

    def add(layer: str, problem: GemmProblem, count: int) -> None:
        old = rows.get(problem)
        if old is None:
            rows[problem] = ShapeRow(problem, count, (layer,))
        else:
            layers = old.layers + ((layer,) if layer not in old.layers else ())
            rows[problem] = ShapeRow(problem, old.count + count, layers)

    for tokens in sorted(set(batch_sizes) | set(prefill_tokens)):
        for layer, problem, count in layer_problems(args, tp, tokens, dtype, outdtype):
            add(layer, problem, count)
    if lm_head:
        for batch in sorted(set(batch_sizes)):
            add("lm_head", lm_head_problem(args, tp, batch, model_dtype), 1)
    return list(rows.values())
