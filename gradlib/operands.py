"""Random operands for a problem and the fp32 reference every solution is checked against."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from solidx.gradlib.problem import GemmProblem


@dataclass
class GemmOperands:
    """Inputs of one call: ``x[N, K]``, ``w[M, K]`` (both ``problem.dtype``), per-tensor scales
    (0-d float32, fp8 only, else None) and ``bias[M]`` in ``problem.outdtype`` or None."""

    x: torch.Tensor
    w: torch.Tensor
    scale_x: torch.Tensor | None
    scale_w: torch.Tensor | None
    bias: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.w, self.scale_x, self.scale_w, self.bias) if t is not None]


def make_operands(
    problem: GemmProblem,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> GemmOperands:
    """Random, never-zero operands. fp8 values use the whole e4m3 range's central part, with
    scales that bring products back to O(1)."""
    device = torch.device(device)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float32).to(device)

    if problem.is_fp8:
        x = (randn(problem.N, problem.K) * 8).clamp(-240, 240).to(problem.dtype)
        w = (randn(problem.M, problem.K) * 8).clamp(-240, 240).to(problem.dtype)
        scale_x = torch.tensor(1 / 8, dtype=torch.float32, device=device)
        scale_w = torch.tensor(1 / (8 * problem.K**0.5), dtype=torch.float32, device=device)
    else:
        x = randn(problem.N, problem.K).to(problem.dtype)
        w = (randn(problem.M, problem.K) / problem.K**0.5).to(problem.dtype)
        scale_x = scale_w = None
    bias = randn(problem.M).to(problem.outdtype) if problem.bias else None
    return GemmOperands(x, w, scale_x, scale_w, bias)


def reference_gemm(problem: GemmProblem, ops: GemmOperands) -> torch.Tensor:
    """``(x·sx) @ (w·sw)ᵀ + bias`` in float32 on the operands' device; returns float32 [N, M]."""
    x = ops.x.float()
    w = ops.w.float()
    if ops.scale_x is not None:
        x = x * ops.scale_x.float()
    if ops.scale_w is not None:
        w = w * ops.scale_w.float()
    y = x @ w.t()
    if ops.bias is not None:
        y = y + ops.bias.float()
    return y


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |out − ref| over the reference's scale (max |ref|); inf when out has NaN/Inf."""
    out = out.float()
    if not torch.isfinite(out).all():
        return float("inf")
    scale = ref.abs().max().clamp_min(1e-12)
    return float((out - ref).abs().max() / scale)


def tolerance(problem: GemmProblem) -> float:
    """Accepted max_rel_err for a problem: the output dtype's rounding plus fp32 accumulation
    error that grows with sqrt(K). bf16 out ≈ 2^-8, fp16 ≈ 2^-11; fp8 inputs are exact in fp32."""
    out_eps = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(problem.outdtype, 2.0**-16)
    in_eps = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(problem.dtype, 0.0)
    return 2 * out_eps + 4 * in_eps + 1e-6 * problem.K**0.5 + 1e-4
