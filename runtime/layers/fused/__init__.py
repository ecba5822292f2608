"""Fused Triton kernels for the layers' elementwise work: RMSNorm with the residual add before it,
rotary embedding in place, SiLU-and-mul. Each layer keeps its torch code as the reference and
dispatches through :func:`use_triton`: CUDA tensors run the kernel, other tensors the torch code.

Where :func:`use_fusion` holds, a kernel also does the next step's work: RMSNorm and SiLU-and-mul
quantize their output for the fp8 linear layer they feed, rotary writes the KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_enabled = True
_fuse_next = True


def use_triton(x: torch.Tensor) -> bool:
    """Whether a layer given ``x`` runs its fused kernel (a CUDA tensor, fusion not turned off)."""
    return _enabled and x.is_cuda


def use_fusion(x: torch.Tensor) -> bool:
    """Whether a layer given ``x`` runs a kernel that does the next step's work too (the fp8
    input quantization of the next linear layer, the KV-cache write after rotary)."""
    return _fuse_next and use_triton(x)


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


@contextmanager
def separate_kernels() -> Iterator[None]:
    """Run each step in its own kernel on CUDA tensors: RMSNorm, then the linear layer's input
    quantization; rotary, then the KV-cache store (the launches before fusion across steps).
    The results are the same bit for bit."""
    global _fuse_next
    saved, _fuse_next = _fuse_next, False
    try:
        yield
    finally:
        _fuse_next = saved
