"""Whether a problem fits the device before a tune allocates it: its operands, their copies and
the fp32 reference, against the device's memory (a GPU's total, the machine's RAM on a CPU)."""
from __future__ import annotations

import os

import torch
from solidx.gradlib.problem import GemmProblem

USABLE_SHARE = 0.9  # of the device's memory; the rest is the framework's and the libraries'


def tune_bytes(problem: GemmProblem) -> int:
    """The least a tune of ``problem`` allocates: two copies of x, w, bias and the output (the
    rotating copies), and the fp32 reference (x, w and the result in fp32)."""
    m, n, k = problem.M, problem.N, problem.K
    operands = (n * k + m * k) * problem.dtype.itemsize + m * 4
    output = n * m * problem.outdtype.itemsize
    reference = (n * k + m * k + n * m) * 4
    return 2 * (operands + output) + reference


def device_memory(device: str, gpu: int | None) -> int:
    """Bytes of memory of the tuning device: ``device`` is the worker's device name
    (``cpu-...`` on the CPU), ``gpu`` its index."""
    if device.startswith("cpu-"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return torch.cuda.get_device_properties(gpu or 0).total_memory


def too_big(problem: GemmProblem, memory: int) -> str | None:
    """Why ``problem`` cannot be tuned in ``memory`` bytes, or None when it fits."""
    need = tune_bytes(problem)
    if need <= USABLE_SHARE * memory:
        return None
    return (f"not tuned: {problem} needs at least {need / 2**30:.1f} GiB to tune, more than "
            f"{USABLE_SHARE:.0%} of the device's {memory / 2**30:.1f} GiB")


__all__ = ["USABLE_SHARE", "tune_bytes", "device_memory", "too_big"]
