"""Architecture registry: the ``architectures`` entry of config.json -> model class."""

from __future__ import annotations

from torch import nn

from solidx.runtime.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,  # ModelArgs gives Qwen2 its q/k/v bias
}


def get_model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"architecture {architecture!r} is not supported "
            f"(supported: {', '.join(MODEL_REGISTRY)})"
        ) from None
