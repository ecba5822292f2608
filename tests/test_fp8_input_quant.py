"""The fused input-quantization kernels against fp8_math.quantize.

Under the Triton interpreter (CPU) the dynamic paths get exact e4m3 values times a power of two
(so the scale has no rounding to differ in) and the static path random inputs (the kernels round
to e4m3 themselves, since the interpreter's own cast rounds wrongly); on a GPU ``quantize_input``
is compared bit for bit on random inputs of every path."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import solidx.runtime.quantization.input_quant as iq
from solidx.runtime.quantization.fp8_math import FP8_DTYPE, FP8_MAX, quantize


def exact_input(numel: int, scale: float) -> torch.Tensor:
    """Values on the e4m3 grid times ``scale``, with max |x| = 448 * scale."""
    grid = torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 60
    grid = grid.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    grid[numel // 2] = -FP8_MAX
    return grid * scale


@pytest.mark.parametrize("numel", [1, 1000, 2 * iq.BLOCK + 5])
def test_kernels_match_the_torch_quantization(numel: int) -> None:
    x = exact_input(numel, 2.0**-3)
    q_ref, s_ref = quantize(x)
    q, scale = torch.empty(numel, dtype=FP8_DTYPE), torch.empty((), dtype=torch.float32)
    block = 1 << (numel - 1).bit_length()
    iq._quantize_one_program[(1,)](x, q, scale, numel, FP8_MAX, iq.MIN_SCALE, block, PDL=False)
    assert float(scale) == float(s_ref) == 2.0**-3
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))

    grid = (-(-numel // iq.BLOCK),)
    q, scale = torch.empty(numel, dtype=FP8_DTYPE), torch.empty((), dtype=torch.float32)
    amax = x.abs().amax()
    iq._quantize_blocks[grid](x, q, amax, scale, numel, True, FP8_MAX, iq.MIN_SCALE, iq.BLOCK,
                              PDL=False)
    assert float(scale) == 2.0**-3
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))

    static = torch.tensor(2.0**-4)  # a static scale of half the range: large values saturate
    q = torch.empty(numel, dtype=FP8_DTYPE)
    iq._quantize_blocks[grid](x, q, static, static, numel, False, FP8_MAX, iq.MIN_SCALE, iq.BLOCK,
                              PDL=False)
    assert torch.equal(q.view(torch.uint8), quantize(x, static)[0].view(torch.uint8))


@triton.jit
def _round_kernel(x_ptr, y_ptr, numel, MIN_EXPONENT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < numel)
    tl.store(y_ptr + offs, iq.round_to_e4m3(x, MIN_EXPONENT), mask=offs < numel)


def random_in_range(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Random values from below the subnormals to the saturation value, both signs, zeros."""
    gen = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=gen) * 2.0 ** torch.randint(-14, 9, (numel,), generator=gen)
    x[:4] = torch.tensor([0.0, -0.0, 1e-9, -1e-9])
    limit = torch.finfo(dtype).max
    return x.clamp(-limit, limit)


@pytest.mark.parametrize("dtype, min_exponent", [(torch.float8_e4m3fn, -6),
                                                 (torch.float8_e4m3fnuz, -7)])
def test_round_to_e4m3_rounds_as_torch_casts(dtype: torch.dtype, min_exponent: int) -> None:
    x = random_in_range(3000, dtype)
    y = torch.empty_like(x)
    _round_kernel[(-(-x.numel() // iq.BLOCK),)](x, y, x.numel(), min_exponent, iq.BLOCK)
    assert torch.equal(y.to(dtype).float(), y)  # on the e4m3 grid: the cast below is exact
    assert torch.equal(y.to(dtype).view(torch.uint8), x.to(dtype).view(torch.uint8))


def test_kernels_round_random_inputs_as_torch_does() -> None:
    x = random_in_range(3000, FP8_DTYPE) * 0.05
    static = torch.tensor(0.05)
    q = torch.empty(x.shape, dtype=FP8_DTYPE)
    grid = (-(-x.numel() // iq.BLOCK),)
    iq._quantize_blocks[grid](x, q, static, static, x.numel(), False, FP8_MAX, iq.MIN_SCALE,
                              iq.BLOCK, PDL=False)
    # values, not bits: the interpreter's cast drops the sign of -0.0 (the GPU's keeps it)
    assert torch.equal(q.float(), quantize(x, static)[0].float())


def test_cpu_tensors_take_the_torch_path() -> None:
    x = torch.randn(3, 40)
    q, scale = iq.quantize_input(x)
    q_ref, s_ref = quantize(x)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and scale == s_ref


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 4096), (1, 14336), (32, 4096), (512, 14336)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_input_on_gpu_is_bitwise_torch(shape, dtype, static) -> None:
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    scale = torch.tensor(0.02, device="cuda") if static else None
    q, s = iq.quantize_input(x, scale)
    _, s_ref = quantize(x, scale)
    assert q.shape == x.shape and s.shape == () and s.dtype == torch.float32
    # torch divides by a Python scalar as a multiply by its reciprocal, the kernel divides
    # correctly rounded: the dynamic scale may differ in the last bit.
    assert abs(float(s) - float(s_ref)) <= 2 * torch.finfo(torch.float32).eps * float(s_ref)
    q_ref, _ = quantize(x, s)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    graph = torch.cuda.CUDAGraph()  # capturable: replays write the same values
    with torch.cuda.graph(graph):
        q_graph, _ = iq.quantize_input(x, scale)
    graph.replay()
    assert torch.equal(q_graph.view(torch.uint8), q_ref.view(torch.uint8))
