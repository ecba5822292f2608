"""Fused Triton kernels for the layers' elementwise work: RMSNorm with the residual add before it,
rotary embedding in place, SiLU-and-mul. Each layer keeps its torch code as the reference and
dispatches through :func:`use_triton`: CUDA tensors run the kernel, other tensors the torch code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_enabled = True


def use_triton(x: torch.Tensor) -> bool:
    """Whether a layer given ``x`` runs its fused kernel (a CUDA tensor, fusion not turned off)."""
    return _enabled and x.is_cuda


@contextmanager
def torch_only() -> Iterator[None]:
    """Run the layers' torch code on CUDA tensors too, e.g. to compare fused and unfused engines.
    Dispatch happens per call, so a CUDA graph keeps the path it was captured with."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved
