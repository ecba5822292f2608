"""``default``: the framework's own call, the baseline every tuned row must beat.

fp8: ``torch._scaled_mm`` (cuBLASLt's top heuristic pick on CUDA); 16-bit: ``F.linear``.
Runs on any device, CPU included.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from solidx.gradlib.backends.base import Backend, Solution
from solidx.gradlib.backends.default_spec import SPEC, check_spec
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem


def _scaled_mm_supported(problem: GemmProblem, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    return problem.K % 16 == 0 and problem.M % 16 == 0


def scaled_mm(ops: GemmOperands, outdtype: torch.dtype) -> torch.Tensor:
    """``torch._scaled_mm`` with gradlib's operand layout, falling back to a dequantized matmul
    where the library refuses the shape (CUDA needs M and K multiples of 16)."""
    problem_ok = ops.x.shape[1] % 16 == 0 and ops.w.shape[0] % 16 == 0
    if ops.x.device.type != "cuda" or problem_ok:
        return torch._scaled_mm(
            ops.x, ops.w.t(), scale_a=ops.scale_x, scale_b=ops.scale_w, bias=ops.bias,
            out_dtype=outdtype,
        )
    y = (ops.x.float() * ops.scale_x) @ (ops.w.float() * ops.scale_w).t()
    if ops.bias is not None:
        y = y + ops.bias.float()
    return y.to(outdtype)


class DefaultSolution(Solution):
    libtype = "default"

    def __init__(self, problem: GemmProblem) -> None:
        self.problem = problem

    @property
    def spec(self) -> str:
        return SPEC

    def accepts(self, n: int) -> bool:
        return True

    def run(self, ops: GemmOperands) -> torch.Tensor:
        if self.problem.is_fp8:
            return scaled_mm(ops, self.problem.outdtype)
        return F.linear(ops.x, ops.w, ops.bias).to(self.problem.outdtype)


class DefaultBackend(Backend):
    libtype = "default"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def solutions(self, problem: GemmProblem) -> list[Solution]:
        return [DefaultSolution(problem)]

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        check_spec(spec)
        return DefaultSolution(problem)
