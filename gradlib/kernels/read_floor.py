"""The read floor: the time one kernel needs just to read a buffer of a given size.

A decode GEMM reads its weight once; no GEMM of that weight can beat a kernel that only reads
the same bytes. ``read_floor`` streams the buffer with 16-byte loads from a persistent grid
(program ``p`` reads blocks ``p, p + P, p + 2P, ...``) and writes one value per program, so
that nothing is optimized away. Benchmarks take the fastest of :data:`FLOOR_CONFIGS`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch

FLOOR_CONFIGS: tuple[dict[str, int], ...] = tuple(
    {"block": block, "num_warps": warps, "programs_per_sm": per_sm}
    for block, warps in ((2048, 4), (4096, 8), (8192, 8))
    for per_sm in (4, 8, 16)
)
"""Launch configurations a benchmark tries; the floor is the fastest of them."""


@triton.jit
def read_floor_kernel(buf_ptr, out_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr,
                      PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(pid * BLOCK, n, step):
        if EVEN:
            acc += tl.load(buf_ptr + start + offs)
        else:
            acc += tl.load(buf_ptr + start + offs, mask=start + offs < n, other=0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def floor_output(device: torch.device | str, programs_per_sm: int) -> torch.Tensor:
    """The int32 result buffer for a read on ``device``: one slot per program."""
    device = torch.device(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if (
        device.type == "cuda") else 1
    return torch.empty(sms * programs_per_sm, dtype=torch.int32, device=device)


def read_floor(buf: torch.Tensor, out: torch.Tensor, *, block: int = 4096,
               num_warps: int = 8) -> torch.Tensor:
    """Read every byte of the contiguous ``buf`` (any dtype, e.g. a weight) with
    ``out.numel()`` programs; each writes the int32 sum of what it read into ``out``."""
    if not buf.is_contiguous():
        raise ValueError("read_floor needs a contiguous buffer")
    nbytes = buf.numel() * buf.element_size()
    if nbytes % 4:
        raise ValueError(f"read_floor reads whole int32 words; {nbytes} bytes"
                         " is not a multiple of 4")
    words = buf.reshape(-1).view(torch.uint8).view(torch.int32)
    n = words.numel()
    read_floor_kernel[(out.numel(),)](words, out, n, BLOCK=block, EVEN=n % block == 0,
                                      **dependent_launch.launch_options(buf.device),
                                      num_warps=num_warps)
    return out
