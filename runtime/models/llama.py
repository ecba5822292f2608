"""The Llama family (Llama 2 and 3, Mistral) and Qwen2 (the same network with biased q/k/v).

Module and parameter names follow Hugging Face, with q/k/v fused into ``qkv_proj`` and gate/up
into ``gate_up_proj`` (``packed_modules_mapping`` tells the loader how).

Each RMSNorm and the SiLU-and-mul get the ``input_quant()`` of the linear layer they feed
(``qkv_proj``, ``gate_up_proj``, ``down_proj``): for an fp8 layer their kernel quantizes its
input, for another (unquantized models, layers a checkpoint excludes) it is None and the layer
gets the plain tensor. ``o_proj`` quantizes the attention output itself.

Under tensor parallelism ``o_proj`` and ``down_proj`` return each rank's partial sum; the RMSNorm
after each (``all_reduce=True``) sums them over the ranks, fused with its residual add where
``SOLIDX_FUSED_ALL_REDUCE=1`` and the custom all-reduce allow.
"""

from __future__ import annotations

import torch
from torch import nn

from solidx.runtime.layers.activation import SUPPORTED_ACTIVATIONS, SiluAndMul
from solidx.runtime.layers.attention import Attention
from solidx.runtime.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from solidx.runtime.layers.layernorm import RMSNorm
from solidx.runtime.layers.linear import (
    LinearMethodFactory,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from solidx.runtime.layers.rotary import RotaryEmbedding
from solidx.runtime.quantization.input_quant import QuantizedInput
from solidx.shape_capture.model_args import ModelArgs


class LlamaAttention(nn.Module):
    def __init__(
        self,
        args: ModelArgs,
        rotary: RotaryEmbedding,
        dtype: torch.dtype,
        linear_method: LinearMethodFactory,
        prefix: str,
    ) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            args.hidden_size,
            args.head_dim,
            args.num_heads,
            args.num_kv_heads,
            args.qkv_bias,
            dtype,
            linear_method(f"{prefix}.qkv_proj"),
            f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            args.num_heads * args.head_dim,
            args.hidden_size,
            args.o_proj_bias,
            dtype,
            linear_method(f"{prefix}.o_proj"),
            f"{prefix}.o_proj",
            reduce_results=False,  # summed by post_attention_layernorm
        )
        q_size, kv_size, _ = self.qkv_proj.output_sizes
        self.split = [q_size, kv_size, kv_size]
        self.attn = Attention(
            self.qkv_proj.num_heads, args.head_dim, args.head_dim**-0.5,
            self.qkv_proj.num_kv_heads, rotary,
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor | QuantizedInput
                ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.split, dim=-1)
        return self.o_proj(self.attn(q, k, v, positions))


class LlamaMLP(nn.Module):
    def __init__(
        self, args: ModelArgs, dtype: torch.dtype, linear_method: LinearMethodFactory, prefix: str
    ) -> None:
        super().__init__()
        if args.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"hidden_act {args.hidden_act!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        inter = args.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            args.hidden_size,
            [inter, inter],
            args.mlp_bias,
            dtype,
            linear_method(f"{prefix}.gate_up_proj"),
            f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            inter,
            args.hidden_size,
            args.mlp_bias,
            dtype,
            linear_method(f"{prefix}.down_proj"),
            f"{prefix}.down_proj",
            reduce_results=False,  # summed by the next layer's input_layernorm (or the last norm)
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor | QuantizedInput) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x), self.down_proj.input_quant()))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        args: ModelArgs,
        rotary: RotaryEmbedding,
        dtype: torch.dtype,
        linear_method: LinearMethodFactory,
        prefix: str,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(args, rotary, dtype, linear_method, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(args, dtype, linear_method, f"{prefix}.mlp")

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qkv_quant = self.self_attn.qkv_proj.input_quant()
        if residual is None:
            residual = hidden
            normed = self.input_layernorm(hidden, quant=qkv_quant)
        else:
            normed, residual = self.input_layernorm(hidden, residual, qkv_quant, all_reduce=True)
        hidden = self.self_attn(positions, normed)
        normed, residual = self.post_attention_layernorm(
            hidden, residual, self.mlp.gate_up_proj.input_quant(), all_reduce=True
        )
        return self.mlp(normed), residual


class LlamaModel(nn.Module):
    def __init__(
        self,
        args: ModelArgs,
        max_model_len: int,
        dtype: torch.dtype,
        linear_method: LinearMethodFactory,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.hidden_size, dtype)
        rotary = RotaryEmbedding(args.head_dim, max_model_len, args.rope_theta, args.rope_scaling)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(args, rotary, dtype, linear_method, f"model.layers.{i}")
            for i in range(args.num_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual, all_reduce=True)
        return hidden


class LlamaForCausalLM(nn.Module):
    """``forward(input_ids [T], positions [T]) -> hidden [T, H]``;
    ``compute_logits(hidden [n, H]) -> logits [n, vocab]``."""

    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        args: ModelArgs,
        max_model_len: int,
        dtype: torch.dtype,
        linear_method: LinearMethodFactory,
    ) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args, max_model_len, dtype, linear_method)
        self.lm_head = ParallelLMHead(args.vocab_size, args.hidden_size, dtype)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @staticmethod
    def checkpoint_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
        """Every tensor of a Hugging Face checkpoint of this architecture, with its full shape."""
        h, inter, d = args.hidden_size, args.intermediate_size, args.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (args.vocab_size, h)}
        projections = {
            "self_attn.q_proj": (args.num_heads * d, h, args.qkv_bias),
            "self_attn.k_proj": (args.num_kv_heads * d, h, args.qkv_bias),
            "self_attn.v_proj": (args.num_kv_heads * d, h, args.qkv_bias),
            "self_attn.o_proj": (h, args.num_heads * d, args.o_proj_bias),
            "mlp.gate_proj": (inter, h, args.mlp_bias),
            "mlp.up_proj": (inter, h, args.mlp_bias),
            "mlp.down_proj": (h, inter, args.mlp_bias),
        }
        for i in range(args.num_layers):
            prefix = f"model.layers.{i}"
            shapes[f"{prefix}.input_layernorm.weight"] = (h,)
            shapes[f"{prefix}.post_attention_layernorm.weight"] = (h,)
            for name, (out_features, in_features, bias) in projections.items():
                shapes[f"{prefix}.{name}.weight"] = (out_features, in_features)
                if bias:
                    shapes[f"{prefix}.{name}.bias"] = (out_features,)
        shapes["model.norm.weight"] = (h,)
        if not args.tie_word_embeddings:
            shapes["lm_head.weight"] = (args.vocab_size, h)
        return shapes
