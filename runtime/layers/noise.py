"""Counter-based exponential noise for sampling: no generator state, so it can run inside a CUDA
graph and a seeded request draws the same noise in any batch, on any path.

The noise of row r at vocabulary index v is a pure function of the row's 64-bit seed (two 32-bit
words), its output position (how many tokens its sequence has generated) and v:

    key = mix(mix(mix(lo ^ 0x9E3779B9) ^ hi) ^ position)
    h   = mix(key ^ mix(v ^ 0x85EBCA6B))
    u   = (2 * (h >> 9) + 1) / 2**24        (exact in float32, in (0, 1))
    E   = -log(u)                           (Exp(1))

where ``mix`` is a 32-bit integer hash (xor-shift, multiply, xor-shift, multiply, xor-shift).
The torch code (CPU, and the reference) keeps each 32-bit value in an int64 and masks after each
multiply (the second multiplier is taken as its negative two's complement twin, so no product
leaves int64); the Triton kernel (CUDA tensors) computes in uint32. Both give the same ``u``
bit for bit; ``E`` may differ in its last bit between the two (``log``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.layers.fused import use_triton

MASK = 0xFFFFFFFF
MUL_1 = 0x7FEB352D
MUL_2 = 0x846CA68B
SEED_SALT = 0x9E3779B9
INDEX_SALT = 0x85EBCA6B
BLOCK = 1024


def mix(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit hash of ``x`` (int64 values in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = (x * MUL_1) & MASK
    x = x ^ (x >> 15)
    x = (x * (MUL_2 - 2**32)) & MASK  # the low 32 bits of x * MUL_2
    return x ^ (x >> 16)


def uniform_noise_native(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """``u`` [B, vocab] (float32) for seeds [B, 2] (int32 low and high words) and positions [B]."""
    lo, hi = seeds[:, 0].long() & MASK, seeds[:, 1].long() & MASK
    key = mix(mix(mix(lo ^ SEED_SALT) ^ hi) ^ (positions.long() & MASK))
    index = mix(torch.arange(vocab, device=seeds.device) ^ INDEX_SALT)
    h = mix(key[:, None] ^ index[None, :])
    return ((h >> 9) * 2 + 1).float() * 2.0**-24


def exponential_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """``E`` [B, vocab] (float32, Exp(1) draws) for seeds [B, 2] and positions [B], on their
    device: the Triton kernel for CUDA tensors (unless ``fused.torch_only``), else torch."""
    if not use_triton(seeds):
        return -uniform_noise_native(seeds, positions, vocab).log()
    return exponential_noise_triton(seeds, positions, vocab)


def exponential_noise_triton(
    seeds: torch.Tensor, positions: torch.Tensor, vocab: int
) -> torch.Tensor:
    """The Triton kernel behind :func:`exponential_noise` (any device under TRITON_INTERPRET)."""
    rows = seeds.shape[0]
    out = torch.empty(rows, vocab, dtype=torch.float32, device=seeds.device)
    if rows and vocab:
        _noise_kernel[(rows, triton.cdiv(vocab, BLOCK))](
            seeds, positions, out, seeds.stride(0), seeds.stride(1), positions.stride(0), vocab,
            BLOCK=BLOCK, **dependent_launch.launch_options(out.device), num_warps=4,
        )
    return out


@triton.jit
def _mix(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _noise_kernel(SEEDS, POSITIONS, OUT, stride_seed, stride_word, stride_position, vocab,
                  BLOCK: tl.constexpr, PDL: tl.constexpr):
    dependent_launch.enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    lo = tl.load(SEEDS + row * stride_seed).to(tl.uint32)
    hi = tl.load(SEEDS + row * stride_seed + stride_word).to(tl.uint32)
    position = tl.load(POSITIONS + row * stride_position).to(tl.uint32)
    key = _mix(_mix(_mix(lo ^ 0x9E3779B9) ^ hi) ^ position)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    h = _mix(key ^ _mix(cols.to(tl.uint32) ^ 0x85EBCA6B))
    u = ((h >> 9) * 2 + 1).to(tl.float32) * (1.0 / 16777216.0)
    tl.store(OUT + row * vocab + cols, -tl.log(u), mask=cols < vocab)
