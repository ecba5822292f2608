"""How many intra-op threads the engine runs with on a CPU.

Measured on a 2-core machine shared with other work (README, Benchmarks): with another
process on a core, torch's default of one thread per core made tiny-llama decode 14× slower
than one thread, and no GEMM of up to 16384×4096 per token ran faster on two threads; with the
cores free, two threads were 1.8× faster. Each op's parallel region waits for every OpenMP
thread, so a descheduled thread stalls every small op. For small models the rule takes the
side whose loss is bounded:

* the user's choice wins: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set, or
  ``torch.set_num_threads`` called (the count differs from the one this module found at import
  and from the one it last set) → torch's setting is kept;
* a model whose largest decoder GEMM has fewer than ``PARALLEL_MIN_WEIGHTS`` weights → 1 thread;
* else the CPUs this process may use, shared among the tensor-parallel ranks of the host.
"""
from __future__ import annotations

import logging
import os

import torch

from solidx.runtime import envs

logger = logging.getLogger(__name__)

PARALLEL_MIN_WEIGHTS = 32 << 20
"""Weights of a decoder GEMM (hidden × intermediate) below which threads cost more than they
gain (the 8192×2048 GEMM still ran slower on 2 threads than on 1; Llama-3-8B's is 58.7 M)."""

_found_at_import = torch.get_num_threads()
_last_set: int | None = None


def user_chose_threads() -> bool:
    """Whether the user set the thread count (environment or ``torch.set_num_threads``)."""
    if envs.OMP_NUM_THREADS or envs.MKL_NUM_THREADS:
        return True
    return torch.get_num_threads() not in (_found_at_import, _last_set)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(hidden_size: int, intermediate_size: int, ranks_on_host: int = 1) -> int:
    """The thread count of the module doc's rule, the user's choice aside."""
    if hidden_size * intermediate_size < PARALLEL_MIN_WEIGHTS:
        return 1
    return max(1, available_cpus() // max(1, ranks_on_host))


def apply_cpu_threads(hidden_size: int, intermediate_size: int, ranks_on_host: int = 1) -> int:
    """Set torch's intra-op threads by the rule unless the user chose; the count in effect."""
    global _last_set
    if user_chose_threads():
        threads = torch.get_num_threads()
        logger.info("CPU: %d intra-op threads (the user's setting)", threads)
        return threads
    threads = choose_threads(hidden_size, intermediate_size, ranks_on_host)
    torch.set_num_threads(threads)
    _last_set = threads
    logger.info("CPU: %d intra-op threads (set OMP_NUM_THREADS to choose)", threads)
    return threads
