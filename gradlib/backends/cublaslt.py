"""``cublaslt``: cuBLASLt's own configurations of a GEMM, called through ctypes.

Problems: fp8 e4m3 × e4m3 with per-tensor scale pointers into bf16/fp16/fp32 (bias epilogue
for bf16/fp16 outputs), and bf16/fp16/fp32 × same into the same dtype; fp32 accumulation.

Candidates, best guesses first (the order of
:func:`~solidx.gradlib.backends.cublaslt_configs.candidate_configs`), bounded by
``max_candidates``. Each is rebuilt from its configuration exactly as
:meth:`CublasLtBackend.from_spec` does and kept only if ``cublasLtMatmulAlgoCheck`` accepts it
within ``WORKSPACE_BYTES``.

Around this module: :mod:`~solidx.gradlib.backends.cublaslt_configs` (configurations, their
specs, candidate order), :mod:`~solidx.gradlib.backends.cublaslt_plan` (cuBLASLt's algorithm
enumeration over the Lt calls hipBLASLt shares, :mod:`~solidx.gradlib.backends.lt_plan`),
:mod:`~solidx.gradlib.backends.cublaslt_api` (loading the library, cuBLASLt-only enums).
"""
from __future__ import annotations

import torch

from solidx.gradlib.backends import cublaslt_api as api
from solidx.gradlib.backends import lt_plan
from solidx.gradlib.backends.base import WORKSPACE_BYTES, Backend, Solution
from solidx.gradlib.backends.cublaslt_configs import LIBTYPE, AlgoConfig, candidate_configs
from solidx.gradlib.backends.cublaslt_plan import MatmulPlan
from solidx.gradlib.backends.lt_vendor import CUBLASLT
from solidx.gradlib.dtypes import dtype_name
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem

HEURISTIC_COUNT = 64
MAX_CANDIDATES = 256
CHECKS_PER_CANDIDATE = 64
"""Listing stops after ``CHECKS_PER_CANDIDATE × max_candidates`` AlgoCheck calls."""


def unsupported_reason(problem: GemmProblem) -> str | None:
    """Why this backend cannot compute a problem, or None if it can."""
    if problem.is_fp8:
        if problem.dtype != torch.float8_e4m3fn:
            return f"cuBLASLt fp8 needs e4m3 × e4m3 operands, not {dtype_name(problem.dtype)}"
        if problem.outdtype not in (torch.bfloat16, torch.float16, torch.float32):
            return f"fp8 into {dtype_name(problem.outdtype)} is unsupported (bf16, fp16, fp32 are)"
        if problem.bias and problem.outdtype == torch.float32:
            return "cuBLASLt's fp8 kernels want a bf16 bias with fp32 output; gradlib's is fp32"
        return None
    if problem.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"operand dtype {dtype_name(problem.dtype)} is not supported"
    if problem.outdtype != problem.dtype:
        return "16/32-bit problems need outdtype == dtype"
    return None


class CublasLtSolution(Solution):
    """One checked cuBLASLt configuration. Accepts every token count AlgoCheck accepts."""

    libtype = LIBTYPE

    def __init__(self, problem: GemmProblem, plan: MatmulPlan, config: AlgoConfig,
                 algo: api.MatmulAlgo, workspace_bytes: int) -> None:
        self.problem = problem
        self.config = config
        self._plan = plan
        self._algo = algo
        self._workspace: dict[int, int | None] = {problem.N: workspace_bytes}

    @property
    def spec(self) -> str:
        return self.config.spec

    @property
    def workspace_bytes(self) -> int:
        """Workspace this configuration needs at ``problem.N``."""
        return self._workspace[self.problem.N] or 0

    def _workspace_for(self, n: int) -> int | None:
        if n not in self._workspace:
            self._workspace[n] = self._plan.check(self._algo, n) if n > 0 else None
        return self._workspace[n]

    def accepts(self, n: int) -> bool:
        return self._workspace_for(n) is not None

    def run(self, ops: GemmOperands) -> torch.Tensor:
        n = ops.x.shape[0]
        workspace = self._workspace_for(n)
        if workspace is None:
            raise ValueError(f"{self.spec} does not accept N={n} for {self.problem}")
        return self._plan.matmul(self._algo, ops, workspace)


class CublasLtBackend(Backend):
    """cuBLASLt through ctypes; see the module docstring for problems and candidates."""

    libtype = LIBTYPE

    def __init__(
        self, max_candidates: int = MAX_CANDIDATES, heuristic_count: int = HEURISTIC_COUNT
    ) -> None:
        if max_candidates < 1 or heuristic_count < 1:
            raise ValueError("max_candidates and heuristic_count must be positive")
        self.max_candidates = max_candidates
        self.heuristic_count = heuristic_count
        self._plans: dict[tuple, MatmulPlan] = {}

    def available(self) -> tuple[bool, str]:
        if torch.version.hip:
            return False, "ROCm build of torch: use the hipblaslt backend"
        if not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
        lib, why = api.load()
        return (True, "") if lib is not None else (False, why)

    def _require_available(self) -> None:
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"cublaslt backend unavailable: {why}")

    def version(self) -> str:
        """e.g. ``cublasLt-130100``; RuntimeError if the backend is unavailable."""
        self._require_available()
        device = torch.device("cuda", torch.cuda.current_device())
        return f"cublasLt-{lt_plan.library_version(CUBLASLT, api.library(), device)}"

    def _plan(self, problem: GemmProblem) -> MatmulPlan:
        index = torch.cuda.current_device()
        key = (index, problem.M, problem.K, problem.bias, problem.dtype, problem.outdtype)
        if key not in self._plans:
            self._plans[key] = MatmulPlan(problem, index)
        return self._plans[key]

    def solutions(self, problem: GemmProblem, max_candidates: int | None = None) -> list[Solution]:
        """Checked candidates on the current device, heuristic picks first, at most
        ``max_candidates`` (default: the backend's); empty where the backend or the problem is
        unsupported."""
        if not self.available()[0] or unsupported_reason(problem):
            return []
        limit = max_candidates or self.max_candidates
        plan = self._plan(problem)
        picks = plan.heuristic_algos(problem.N, self.heuristic_count)
        heuristic = [plan.config_of(algo) for algo in picks]
        if not heuristic:
            return []
        caps = {}
        for algo_id in plan.algo_ids():
            cap = plan.caps(algo_id)
            if cap is not None and (not problem.bias or cap.epilogue_mask & api.EPILOGUE_BIAS):
                caps[algo_id] = cap
        found: list[Solution] = []
        seen: set[AlgoConfig] = set()
        for config in candidate_configs(heuristic, caps, problem.K):
            if len(found) >= limit or len(seen) >= CHECKS_PER_CANDIDATE * limit:
                break
            if config in seen:
                continue
            seen.add(config)
            try:
                algo = plan.build(config)
            except ValueError:
                continue
            workspace = plan.check(algo, problem.N)
            if workspace is not None:
                found.append(CublasLtSolution(problem, plan, config, algo, workspace))
        return found

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        """Rebuild a solution on the current device; ValueError naming the spec if it is
        malformed or the library refuses it for the problem."""
        config = AlgoConfig.parse(spec)
        self._require_available()
        reason = unsupported_reason(problem)
        if reason:
            raise ValueError(f"{spec}: {reason}")
        plan = self._plan(problem)
        algo = plan.build(config)
        workspace = plan.check(algo, problem.N)
        if workspace is None:
            raise ValueError(
                f"{spec}: cublasLtMatmulAlgoCheck refuses it for {problem} on "
                f"{torch.cuda.get_device_name()}, or it needs more than {WORKSPACE_BYTES} bytes "
                "of workspace"
            )
        return CublasLtSolution(problem, plan, config, algo, workspace)
