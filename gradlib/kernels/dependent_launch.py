"""Programmatic dependent launch (PDL, NVIDIA Hopper and later): solidx's Triton kernels launch
while the kernel before them on the stream still runs.

A kernel launched with PDL becomes resident as soon as every program of the kernel before it
has called ``griddepcontrol.launch_dependents`` (ours do at their start, :func:`enter`) or
exited; it then waits until that kernel has finished and its writes are visible. Its launch
overlaps the previous kernel's run: a decode step is a chain of a few hundred kernels of a
few microseconds each, so the boundaries add up (on an H200 a one-program quantization after
a GEMM went from 2.59 to 2.37 µs).

The contract of a kernel launched with ``**launch_options(device)``: it calls :func:`enter`
(its ``PDL`` constexpr passed on) before it loads or stores any global memory. The wait covers
every earlier kernel on the stream, as each of them waited for its own predecessor before it
finished. Kernels that are not ours (cuBLAS, torch) are launched without PDL and wait for ours
as usual.

``SOLIDX_PDL=0`` launches every kernel after the previous one has ended (default ``1``). PDL is
off on CPU, under ``TRITON_INTERPRET=1``, on ROCm and before compute capability 9.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without grid dependency control: PDL stays off
    gdc_launch_dependents = gdc_wait = None

ENV = "SOLIDX_PDL"


def requested() -> bool:
    """``SOLIDX_PDL`` (``1`` by default; ValueError naming the variable unless it is 0 or 1).
    Read here, where the kernels are: gradlib imports nothing of ours; ``runtime.envs`` lists
    it with every other variable."""
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 0 (off) or 1 (on)")
    return value == "1"


@functools.cache
def _device_supports(index: int) -> bool:
    interpreted = type(enter).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1
    if gdc_wait is None or torch.version.hip or interpreted:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether kernels launched on ``device`` use PDL: :func:`requested`, where the device and
    Triton have it."""
    if not requested() or device.type != "cuda":
        return False
    return _device_supports(torch.cuda.current_device() if device.index is None
                            else device.index)


def launch_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for a kernel launch on ``device``: the kernel's ``PDL`` constexpr and,
    where it is on, Triton's ``launch_pdl`` launch option."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


@triton.jit
def enter(PDL: tl.constexpr):
    """The start of a kernel launched with ``launch_options``: let the next kernel on the
    stream launch, then wait for the previous one to finish."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
