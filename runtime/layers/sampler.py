"""Next-token sampling: greedy at temperature 0, else temperature, top-k and top-p, drawn with
per-request generators where a request has a seed.

Sampling uses the exponential race (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``),
so it needs no host synchronisation; only the caller's final ``.tolist()`` waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SamplingTensors:
    """One row per sequence being sampled, on the logits' device.

    ``top_k`` uses the vocabulary size for "off", ``top_p`` 1.0. ``generators[i]`` draws row i's
    noise (None: the shared generator). ``all_greedy`` / ``use_top_k_top_p`` are host flags that
    let the sampler skip work.
    """

    temperatures: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    generators: list[torch.Generator | None]
    all_greedy: bool
    use_top_k_top_p: bool


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Set to -inf every logit outside its row's top-k, then outside its smallest top-p nucleus
    (the most likely token always stays)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    sorted_logits.masked_fill_(rank[None, :] >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits.masked_fill_(mass_before >= top_p[:, None], float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits)


class Sampler(nn.Module):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, logits: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
        """Token ids [B] (int64, on the logits' device) for logits [B, V]."""
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        if params.all_greedy:
            return greedy
        scaled = logits / params.temperatures.clamp(min=1e-5).unsqueeze(1)
        if params.use_top_k_top_p:
            scaled = apply_top_k_top_p(scaled, params.top_k, params.top_p)
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, generator in enumerate(params.generators):
            if generator is not None:
                noise[row].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(params.temperatures == 0, greedy, sampled)
