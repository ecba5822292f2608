"""Tiny random Hugging Face checkpoints for runtime tests, written with transformers itself.

Each is a folder with config.json, model.safetensors (float32) and a byte-level BPE tokenizer
trained on the spot. Weights are drawn wide (std 0.5 embeddings, 0.2 elsewhere) so that the top
token of every step wins by far more than float32 rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A paged KV cache stores keys and values in fixed-size blocks.",
    "Continuous batching schedules every running sequence each step.",
    "Tensor parallelism splits the weights of each layer across devices.",
    "Greedy decoding picks the most likely token at every position.",
    "Prefix caching shares the blocks of a common prompt between requests.",
]

# "seed" is one whose greedy top-1 margins on the parity prompts all exceed 1e-3.
KINDS: dict[str, dict[str, Any]] = {
    # multi-head attention, tied embeddings
    "llama-mha": {
        "arch": "llama",
        "seed": 5,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": True,
    },
    # grouped-query attention with Llama 3 rope scaling
    "llama-gqa": {
        "arch": "llama",
        "seed": 5,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "rope_theta": 500000.0,
    },
    # Mistral (v0.2 and later: no sliding window)
    "mistral": {
        "arch": "mistral",
        "seed": 0,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": None,
    },
    # Qwen2: q/k/v bias, GQA
    "qwen2": {"arch": "qwen2", "seed": 0, "num_attention_heads": 4, "num_key_value_heads": 1},
}


def train_tokenizer(folder: Path) -> Any:
    """A byte-level BPE tokenizer trained on CORPUS, saved to ``folder``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.add_bos_token = True
    fast.save_pretrained(folder)
    return fast


def make_checkpoint(folder: Path, kind: str, seed: int | None = None) -> Path:
    """Write the tiny checkpoint ``kind`` (a key of KINDS; its seed unless given) to ``folder``."""
    import transformers

    spec = dict(KINDS[kind])
    arch = spec.pop("arch")
    default_seed = spec.pop("seed")
    seed = default_seed if seed is None else seed
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(folder)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[arch]
    config_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForCausalLM")
    config = config_cls(**common, **spec)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.5)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.2)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder
