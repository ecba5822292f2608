"""Programmatic dependent launch (PDL, NVIDIA Hopper and later): solidx's Triton kernels start
while the kernel before them on the stream still runs.

A kernel launched with PDL becomes resident as soon as every program of the kernel before it
has called :func:`let_dependents_start` (ours do at their start) or exited; it then waits in
:func:`wait_for_producer` until that kernel has finished and its writes are visible. The launch,
and whatever a kernel does before its wait, overlaps the previous kernel: a decode step is a
chain of a few hundred kernels of a few microseconds each, so their boundaries add up.

The contract of a kernel launched with ``**launch_options(device)`` (its ``PDL`` constexpr
set): it calls :func:`wait_for_producer` before it loads anything another kernel writes and
before it stores anything. Before the wait it may only prefetch memory that no kernel writes
while it runs (a GEMM's weight, :func:`prefetch_l2`). The wait covers every earlier kernel on
the stream, as each of them waited for its own predecessor before it finished. Kernels that
are not ours (cuBLAS, torch) are launched without PDL and wait for ours as usual.

``SOLIDX_PDL`` selects the mode: ``prefetch`` (the default where PDL exists) launches early and
lets the skinny GEMMs prefetch their weights into L2 before the wait; ``launch`` launches early
without prefetching; ``off`` launches every kernel after the previous one has ended. Off on
CPU, under ``TRITON_INTERPRET=1``, on ROCm and before compute capability 9.
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

MODES = ("off", "launch", "prefetch")
ENV = "SOLIDX_PDL"


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _device_mode(index: int, requested: str) -> str:
    if gdc_wait is None or torch.version.hip or _interpreted():
        return "off"
    if torch.cuda.get_device_capability(index)[0] < 9:
        return "off"
    return requested


def mode(device: torch.device) -> str:
    """The PDL mode of kernels launched on ``device``: ``SOLIDX_PDL`` where it can run, else
    ``off`` (ValueError naming the variable if it holds something else)."""
    requested = os.environ.get(ENV, "prefetch")
    if requested not in MODES:
        raise ValueError(f"{ENV}={requested!r}: expected one of {', '.join(MODES)}")
    if device.type != "cuda":
        return "off"
    return _device_mode(torch.cuda.current_device() if device.index is None else device.index,
                        requested)


def launch_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for a kernel launch on ``device``: the kernel's ``PDL`` constexpr and,
    where it is on, Triton's ``launch_pdl`` launch option."""
    on = mode(device) != "off"
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def let_dependents_start(PDL: tl.constexpr):
    """Allow the next kernel on the stream to launch now (it still waits for this one's end)."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def wait_for_producer(PDL: tl.constexpr):
    """Wait until the kernels before this one have finished and their writes are visible."""
    if PDL:
        gdc_wait()


@triton.jit
def enter(PDL: tl.constexpr):
    """The start of a kernel that has nothing to prefetch: let the next kernel launch, then
    wait for the previous one."""
    let_dependents_start(PDL)
    wait_for_producer(PDL)


@triton.jit
def prefetch_l2(addresses, sizes):
    """Fetch ``sizes`` bytes at each of ``addresses`` (int64 tensors of one shape; 16-byte
    aligned, sizes multiples of 16, sizes <= 0 skipped) into L2, without waiting for them."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [addresses, sizes], dtype=tl.int32, is_pure=False, pack=1)
