"""``triton``: solidx's own GEMM kernels (gradlib/kernels) with an enumerated config space
(the kernels, their spec fields and the configs listed for a problem:
:mod:`solidx.gradlib.backends.triton_configs`).

Runs on CUDA, and on CPU under ``TRITON_INTERPRET=1`` (slow; for tests).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import triton

from solidx.gradlib.backends.base import Backend, Solution
from solidx.gradlib.backends.triton_configs import TritonConfig, candidate_configs, checked_config
from solidx.gradlib.kernels import skinny_gemm, tiled_gemm
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem


def _interpreted() -> bool:
    return type(skinny_gemm.skinny_kernel).__name__ == "InterpretedFunction"


class TritonSolution(Solution):
    libtype = "triton"

    def __init__(self, problem: GemmProblem, config: TritonConfig) -> None:
        error = config.error(problem)
        if error:
            raise ValueError(f"{config.spec} cannot run {problem}: {error}")
        self.problem = problem
        self.config = config

    @property
    def spec(self) -> str:
        return self.config.spec

    def accepts(self, n: int) -> bool:
        return n >= 1 and self.config.error(self.problem, n) is None

    def run(self, ops: GemmOperands) -> torch.Tensor:
        n, m = ops.x.shape[0], ops.w.shape[0]
        if not self.accepts(n) or m != self.problem.M or ops.x.shape[1] != self.problem.K:
            raise ValueError(f"{self.spec} built for {self.problem} cannot run"
                             f" x{tuple(ops.x.shape)} w{tuple(ops.w.shape)}")
        if ops.x.device.type != "cuda" and not _interpreted():
            raise ValueError("triton solutions need a CUDA device (or TRITON_INTERPRET=1 on CPU)")
        x = ops.x if ops.x.stride(-1) == 1 else ops.x.contiguous()
        w = ops.w if ops.w.stride(-1) == 1 else ops.w.contiguous()
        out = torch.empty(n, m, dtype=self.problem.outdtype, device=x.device)
        c = self.config
        common = {"block_n": c.bn, "block_m": c.bm, "block_k": c.bk, "splitk": c.splitk,
                  "num_warps": c.warps}
        args = (x, w, ops.scale_x, ops.scale_w, ops.bias, out)
        with torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext():
            stream = c.kernel.startswith("stream")
            if c.kernel in ("gemv", "stream"):
                return skinny_gemm.gemv(*args, **common, progs=c.progs, stream=stream)
            if c.kernel in ("skinny", "streamdot"):
                return skinny_gemm.skinny(*args, **common, progs=c.progs, num_stages=c.stages,
                                          stream=stream)
            return tiled_gemm.tiled(*args, **common, group_m=c.gm, num_stages=c.stages)


class TritonBackend(Backend):
    libtype = "triton"

    def available(self) -> tuple[bool, str]:
        if torch.cuda.is_available() or _interpreted():
            return True, ""
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU)"

    def solutions(self, problem: GemmProblem) -> list[Solution]:
        return [TritonSolution(problem, c) for c in candidate_configs(problem)]

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        return TritonSolution(problem, checked_config(spec, problem))

    def version(self) -> str:
        return f"triton-{triton.__version__}"
