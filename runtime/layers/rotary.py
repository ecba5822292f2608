"""Rotary position embedding (the rotate-half layout of Hugging Face Llama), with the ``linear``
and ``llama3`` frequency scalings. The cos/sin table is computed once, in float32. The queries and
keys are rotated in place: on CUDA by one Triton kernel (which the attention layer may also have
write the KV cache, ``runtime.layers.fused.rotary``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from solidx.runtime.layers.fused import use_triton
from solidx.runtime.layers.fused.rotary import rotary_embedding

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None
) -> torch.Tensor:
    """``1 / theta^(2i/d)`` per rotated pair, rescaled as ``scaling["rope_type"]`` says."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim)
    )
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3(inv_freq, scaling)
    raise ValueError(
        f"rope_scaling type {rope_type!r} is not supported "
        f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
    )


def _llama3(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a blend between."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(
        self, head_dim: int, max_position: int, theta: float, scaling: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = inverse_frequencies(head_dim, theta, scaling)
        positions = torch.arange(max_position, dtype=torch.float32, device="cpu")
        freqs = torch.outer(positions, inv_freq)
        self.register_buffer(
            "cos_sin_cache", torch.cat([freqs.cos(), freqs.sin()], dim=-1), persistent=False
        )

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
        """Rotate ``q`` [T, Hq*D] and ``k`` [T, Hkv*D] in place by their tokens' ``positions``
        [T] (on other devices than CUDA the torch code's result is copied back)."""
        if use_triton(q):
            rotary_embedding(positions, q, k, self.cos_sin_cache, self.head_dim)
            return
        rotated_q, rotated_k = self.forward_native(positions, q, k)
        q.copy_(rotated_q)
        k.copy_(rotated_k)

    def forward_native(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch code: the reference of the fused kernel (returns new tensors)."""
        cos, sin = self.cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x1, x2 = x.view(shape[0], -1, self.head_dim).float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(dtype).view(shape)
