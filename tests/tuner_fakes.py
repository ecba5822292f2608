"""Backends that misbehave on purpose, injected into the tuner's child process through
``TuneOptions.backend_overrides`` (``{"triton": "tests.tuner_fakes:FaultyBackend"}``).

Each candidate's spec is ``<libtype>:kind=<kind>``; ``kind`` says what its ``run`` does:

* ``good``: the right result, computed in fp32 and cast;
* ``raise``: raises RuntimeError;
* ``zeros``: returns zeros at once (fast and wrong); ``nan``: NaNs; ``shape``: a transposed result;
* ``hang``: sleeps for an hour;
* ``exit``: ``os._exit(7)``; ``segv``: the process kills itself with SIGSEGV;
* ``illegal`` (CUDA): a kernel stores far outside any allocation, which leaves the CUDA context
  unusable (illegal memory access);
* ``sleep<µs>``: the right result after sleeping that many microseconds (a controllable time).
"""
from __future__ import annotations

import os
import signal
import time

import torch
import triton
import triton.language as tl

from solidx.gradlib.backends.base import Backend, Solution, format_spec, parse_spec
from solidx.gradlib.operands import GemmOperands, reference_gemm
from solidx.gradlib.problem import GemmProblem


@triton.jit
def wild_store_kernel(ptr):
    tl.store(ptr + (1 << 40), 1.0)


class FakeSolution(Solution):
    def __init__(self, libtype: str, problem: GemmProblem, kind: str) -> None:
        self.libtype, self.problem, self.kind = libtype, problem, kind

    @property
    def spec(self) -> str:
        if self.libtype == "default":
            return "default:"
        return format_spec(self.libtype, {"kind": self.kind})

    def run(self, ops: GemmOperands) -> torch.Tensor:
        p = self.problem
        if self.kind == "raise":
            raise RuntimeError("this candidate always fails")
        if self.kind == "hang":
            time.sleep(3600)
        if self.kind == "exit":
            os._exit(7)
        if self.kind == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.kind == "illegal":
            wild_store_kernel[(1,)](ops.w.float())
        if self.kind == "zeros":
            return torch.zeros(p.N, p.M, dtype=p.outdtype)
        if self.kind == "nan":
            return torch.full((p.N, p.M), float("nan"), dtype=p.outdtype)
        if self.kind.startswith("sleep"):
            time.sleep(int(self.kind.removeprefix("sleep")) * 1e-6)
        out = reference_gemm(p, ops).to(p.outdtype)
        return out.t().contiguous() if self.kind == "shape" else out


class FakeBackend(Backend):
    """Candidates of the kinds in ``KINDS`` (subclasses choose)."""

    libtype = "triton"
    KINDS: tuple[str, ...] = ("good",)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def solutions(self, problem: GemmProblem) -> list[Solution]:
        return [FakeSolution(self.libtype, problem, kind) for kind in self.KINDS]

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        libtype, fields = parse_spec(spec)
        if libtype != self.libtype or set(fields) != {"kind"}:
            raise ValueError(f"not a {self.libtype} fake spec: {spec!r}")
        return FakeSolution(self.libtype, problem, fields["kind"])

    def version(self) -> str:
        return "fake-1"


class SlowDefault(FakeBackend):
    """Stands in for ``default``: the right result after 2 ms."""

    KINDS = ("sleep2000",)

    def from_spec(self, spec: str, problem: GemmProblem) -> Solution:
        if spec != "default:":
            raise ValueError(f"not a default spec: {spec!r}")
        return FakeSolution("default", problem, self.KINDS[0])

    def version(self) -> str:
        return f"torch-{torch.__version__}"


class FaultyBackend(FakeBackend):
    """Every way to fail, around candidates that are right and 4× faster than SlowDefault."""

    KINDS = ("raise", "zeros", "good", "nan", "shape", "exit", "segv", "sleep500")


class WrongBackend(FakeBackend):
    """Only fast, wrong candidates."""

    KINDS = ("zeros", "nan")


class MarginBackend(FakeBackend):
    """A right candidate faster than SlowDefault, by less than a large margin (1.5 ms against
    2 ms)."""

    KINDS = ("sleep1500",)


class HangingBackend(FakeBackend):
    """A candidate that never returns, then a right one."""

    KINDS = ("hang", "good")


class CudaFaultBackend(FakeBackend):
    """A candidate that breaks the CUDA context, then a right one."""

    KINDS = ("illegal", "good")


class FastBackend(FakeBackend):
    """A right candidate 4× faster than SlowDefault."""

    KINDS = ("sleep500",)


class HangAfterFirstBackend(FakeBackend):
    """A right candidate for one-token problems; one that never returns for the others (a worker
    busy when the tuner is told to stop)."""

    def solutions(self, problem: GemmProblem) -> list[Solution]:
        kind = "good" if problem.N == 1 else "hang"
        return [FakeSolution(self.libtype, problem, kind)]
