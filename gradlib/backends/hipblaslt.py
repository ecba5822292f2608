"""``hipblaslt``: hipBLASLt's solutions of a GEMM, through the shared Lt calls of
:mod:`~solidx.gradlib.backends.lt_plan` with hipBLASLt's vendor table.

Problems: fp8 × fp8 (``float8_e4m3fnuz`` on MI300-class GPUs, OCP ``float8_e4m3fn`` where the GPU
has it) with per-tensor scale pointers into bf16/fp16/fp32 (bias epilogue for bf16/fp16
outputs), and bf16/fp16 × same into the same dtype; fp32 accumulation.

Candidates: the C API has no "all algorithms" call (that is C++, ``hipblaslt-ext``), so the
heuristic is asked for ``heuristic_count`` results and every one whose state is success and
whose workspace fits is a candidate. gradlib's solution index (the ``solidx`` column) is the
first int32 of the algo's data. A spec carries the whole ``hipblasLtMatmulAlgo_t``
(``hipblaslt:index=I,algo=<32 hex digits>,max_ws=B,ws=W``), so a row rebuilds without C++; an
index-only spec (``hipblaslt:index=I``, a row of ROCm's gradlib) is matched among the heuristic's
results, and refused with a message naming it when absent (the runtime then runs ``default``).

Library: ``library=`` (a path, e.g. an ABI stand-in), else the copy this process mapped
(torch's), torch's bundled ``torch/lib``, ``ROCM_HOME``/``ROCM_PATH``'s ``lib`` (as torch resolves
it), ``/opt/rocm/lib``, the loader path. ``device="cpu"`` runs on host pointers: only for a
stand-in library; otherwise the backend needs a ROCm build of torch and a GPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

import torch

from solidx.gradlib.backends import lt_api, lt_plan
from solidx.gradlib.backends.base import WORKSPACE_BYTES, Solution, format_spec, parse_spec
from solidx.gradlib.backends.lt_plan import LtPlan
from solidx.gradlib.backends.lt_vendor import HIPBLASLT, HipBlasLtMatmulAlgo
from solidx.gradlib.backends.rocm_library import RocmLibraryBackend
from solidx.gradlib.dtypes import dtype_name
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem

LIBTYPE = "hipblaslt"
HEURISTIC_COUNT = 256
FP8_TYPES = (torch.float8_e4m3fnuz, torch.float8_e4m3fn)
ROCM_DEFAULT = "/opt/rocm"


def unsupported_reason(problem: GemmProblem) -> str | None:
    """Why this backend cannot compute a problem, or None if it can (the device may still have
    no kernel: its heuristic then returns nothing)."""
    if problem.is_fp8:
        if problem.dtype not in FP8_TYPES:
            return (f"hipBLASLt fp8 needs e4m3fnuz or e4m3fn operands, not "
                    f"{dtype_name(problem.dtype)}")
        if problem.outdtype not in (torch.bfloat16, torch.float16, torch.float32):
            return f"fp8 into {dtype_name(problem.outdtype)} is unsupported (bf16, fp16, fp32 are)"
        if problem.bias and problem.outdtype == torch.float32:
            return "the bias epilogue is used for bf16/fp16 outputs only"
        return None
    if problem.dtype not in (torch.bfloat16, torch.float16):
        return f"operand dtype {dtype_name(problem.dtype)} is not supported (bf16, fp16 are)"
    if problem.outdtype != problem.dtype:
        return "16-bit problems need outdtype == dtype"
    return None


def solution_index(algo: HipBlasLtMatmulAlgo) -> int:
    """gradlib's solution index: the first int32 (little-endian) of the algo's data."""
    return int.from_bytes(bytes(algo.data[:4]), "little", signed=True)


def algo_spec(algo: HipBlasLtMatmulAlgo, workspace_bytes: int) -> str:
    return format_spec(LIBTYPE, {"index": solution_index(algo), "algo": bytes(algo.data).hex(),
                                 "max_ws": algo.max_workspace_bytes, "ws": workspace_bytes})


def parse_algo_spec(spec: str) -> tuple[int, HipBlasLtMatmulAlgo | None, int]:
    """``(index, algo or None, workspace bytes)`` of a spec; ValueError naming the spec if it is
    malformed or its index disagrees with its algo data."""
    libtype, fields = parse_spec(spec)
    if libtype != LIBTYPE:
        raise ValueError(f"not a {LIBTYPE} spec: {spec!r}")
    full, known = {"index", "algo", "max_ws", "ws"}, set(fields)
    if known not in ({"index"}, full):
        raise ValueError(f"hipblaslt spec {spec!r}: expected index=I alone or "
                         "index=I,algo=<32 hex digits>,max_ws=B,ws=W")
    try:
        index = int(fields["index"])
        if known == {"index"}:
            return index, None, 0
        data = bytes.fromhex(fields["algo"])
        max_ws, ws = int(fields["max_ws"]), int(fields["ws"])
    except ValueError:
        raise ValueError(f"hipblaslt spec {spec!r}: a field is not a number / hex string") from None
    if len(data) != 16 or max_ws < 0 or not 0 <= ws <= WORKSPACE_BYTES:
        raise ValueError(f"hipblaslt spec {spec!r}: algo must be 16 bytes, max_ws >= 0, "
                         f"0 <= ws <= {WORKSPACE_BYTES}")
    algo = HipBlasLtMatmulAlgo()
    ctypes.memmove(algo.data, data, 16)
    algo.max_workspace_bytes = max_ws
    if solution_index(algo) != index:
        raise ValueError(f"hipblaslt spec {spec!r}: index {index} is not the algo data's "
                         f"first int32 ({solution_index(algo)})")
    return index, algo, ws


class HipBlasLtSolution(Solution):
    """One hipBLASLt algorithm for one problem (runs at the problem's token count only)."""

    libtype = LIBTYPE

    def __init__(self, problem: GemmProblem, plan: LtPlan, algo: HipBlasLtMatmulAlgo,
                 workspace_bytes: int) -> None:
        self.problem, self._plan, self.algo = problem, plan, algo
        self.workspace_bytes = workspace_bytes

    @property
    def spec(self) -> str:
        return algo_spec(self.algo, self.workspace_bytes)

    @property
    def solidx(self) -> int:
        return solution_index(self.algo)

    def run(self, ops: GemmOperands) -> torch.Tensor:
        return self._plan.matmul(self.algo, ops, self.workspace_bytes)


def library_candidates(maps_text: str, torch_lib: str, rocm_home: str | None,
                       loader_name: str | None) -> list[str]:
    """Where to look for libhipblaslt, best first: the copy already mapped, torch's bundled
    libraries, ``<rocm_home>/lib``, ``/opt/rocm/lib``, the loader's path; no duplicates."""
    dirs = [torch_lib] + [os.path.join(h, "lib") for h in (rocm_home, ROCM_DEFAULT) if h]
    paths = lt_api.mapped_paths(maps_text, "libhipblaslt.so")
    paths += lt_api.globbed(dirs, HIPBLASLT.library_glob)
    paths += [loader_name] if loader_name else []
    return list(dict.fromkeys(paths))


@cache
def load(path: str | None = None) -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of ``path`` or of the first libhipblaslt found, or ``(None, why)``."""
    if path is not None:
        candidates = [path]
    else:
        if torch.cuda.is_available():
            torch.cuda.init()
        candidates = library_candidates(lt_api.maps_text(), lt_api.torch_lib_dir(),
                                        lt_api.rocm_home(), ctypes.util.find_library("hipblaslt"))
    return lt_api.load_first(candidates, HIPBLASLT.signatures(), "libhipblaslt")


class HipBlasLtBackend(RocmLibraryBackend):
    """hipBLASLt through ctypes; see the module docstring for problems, candidates, library."""

    libtype = LIBTYPE
    load = staticmethod(load)

    def __init__(self, library: str | None = None, device: str | None = None,
                 heuristic_count: int = HEURISTIC_COUNT) -> None:
        if heuristic_count < 1:
            raise ValueError("heuristic_count must be positive")
        super().__init__(library, device)
        self.heuristic_count = heuristic_count
        self._plans: dict[tuple, LtPlan] = {}

    def version(self) -> str:
        """e.g. ``hipblaslt-100000``; RuntimeError if the backend is unavailable."""
        return f"hipblaslt-{lt_plan.library_version(HIPBLASLT, self._lib(), self._device())}"

    def _plan(self, problem: GemmProblem) -> LtPlan:
        device = self._device()
        key = (device, problem.M, problem.K, problem.bias, problem.dtype, problem.outdtype)
        if key not in self._plans:
            self._plans[key] = LtPlan(HIPBLASLT, self._lib(), problem, device)
        return self._plans[key]

    def solutions(self, problem: GemmProblem, max_candidates: int | None = None) -> list[Solution]:
        """The heuristic's checked results for the problem, best first, distinct, at most
        ``max_candidates``; empty where the backend or the problem is unsupported."""
        if not self.available()[0] or unsupported_reason(problem):
            return []
        plan = self._plan(problem)
        found: dict[bytes, Solution] = {}
        for result in plan.heuristic(problem.N, self.heuristic_count):
            found.setdefault(bytes(result.algo.data), HipBlasLtSolution(
                problem, plan, result.algo, result.workspaceSize))
        return list(found.values())[:max_candidates]

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        """Rebuild a solution: from the algo data a full spec carries, or by matching an
        index-only spec among the heuristic's results; ValueError naming the spec otherwise."""
        index, algo, workspace = parse_algo_spec(spec)
        self._lib()
        reason = unsupported_reason(problem)
        if reason:
            raise ValueError(f"{spec}: {reason}")
        plan = self._plan(problem)
        if algo is not None:
            return HipBlasLtSolution(problem, plan, algo, workspace)
        results = plan.heuristic(problem.N, self.heuristic_count)
        for result in results:
            if solution_index(result.algo) == index:
                return HipBlasLtSolution(problem, plan, result.algo, result.workspaceSize)
        raise ValueError(
            f"{spec}: hipBLASLt solution index {index} is not among the {len(results)} heuristic "
            f"results for {problem} with {self.version()} (tuned with another build?): the "
            "runtime uses default for it")
