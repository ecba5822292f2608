"""Hugging Face transformers on the same model, for the benchmarks' comparisons: the model (random
weights for a preset), left-padded batches, and the seconds ``generate`` takes."""

from __future__ import annotations

from typing import Any

import torch

from solidx.gradlib.timing import Stopwatch
from solidx.shape_capture.presets import PRESETS, load_model_config


def load_hf_model(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The Hugging Face transformers model of ``model`` on ``device`` in ``dtype``, in eval mode;
    random weights for a preset."""
    # transformers is imported here, not above: seconds of import that only --compare hf needs
    from transformers import AutoConfig, AutoModelForCausalLM

    if model in PRESETS:
        hf_dict = {k: v for k, v in load_model_config(model).items() if k != "model_type"}
        hf_config = AutoConfig.for_model(PRESETS[model]["model_type"], **hf_dict)
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(hf_config, torch_dtype=dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, torch_dtype=dtype).to(device)
    return hf.to(dtype).eval()  # torch_dtype: the keyword transformers 4 and 5 both accept


def hf_generate_seconds(
    hf: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_len: int
) -> float:
    """Seconds Hugging Face ``generate`` takes for ``input_ids`` [B, L] (left-padded where
    ``attention_mask`` is 0) → ``output_len`` greedy tokens each (EOS ignored), after a warm-up."""
    kwargs = {
        "attention_mask": attention_mask,
        "do_sample": False,
        "eos_token_id": None,
        "pad_token_id": 0,
    }
    with torch.inference_mode():
        hf.generate(input_ids, max_new_tokens=4, min_new_tokens=4, **kwargs)
        with Stopwatch(input_ids.device) as watch:
            out = hf.generate(
                input_ids, max_new_tokens=output_len, min_new_tokens=output_len, **kwargs
            )
    if out.shape[1] != input_ids.shape[1] + output_len:
        raise RuntimeError(
            f"transformers generated {out.shape[1] - input_ids.shape[1]} tokens, not {output_len}"
        )
    return watch.seconds


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` [B, longest] left-padded with 0 and the ``attention_mask`` marking tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
