"""The backend interface: a backend lists candidate solutions for a problem and rebuilds one
from its spec string.

Contract:

* ``Backend.available()`` -> ``(ok, reason)``; a backend that is not available lists nothing.
* ``Backend.solutions(problem)`` -> every candidate for the problem, cheap to list (no launches).
* ``Solution.spec`` is ``"<libtype>:<key>=<value>,..."`` naming the full configuration (never a
  rank or an index into a list); ``backend.from_spec(spec, problem)`` rebuilds the same solution.
* ``Solution.run(ops)`` computes ``(x·sx) @ (w·sw)ᵀ + bias`` into a new ``[N, M]`` tensor of
  ``problem.outdtype`` (see :class:`gradlib.operands.GemmOperands`). A solution may accept other
  token counts than the problem it was built for: ``accepts(n)`` says which. ``run`` must be
  capturable in a CUDA graph (no host sync, no allocation outside the caching allocator).
* ``Solution.solidx`` is the integer written in the CSV ``solidx`` column: the library's index
  for hipblaslt/rocblas, else :func:`spec_hash` of the spec.

Imports no torch (the CSV tools check specs and hashes with it); backends import torch.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from solidx.gradlib.problem import GemmProblem

if TYPE_CHECKING:
    import torch

    from solidx.gradlib.operands import GemmOperands


WORKSPACE_BYTES = 32 * 1024 * 1024
"""The GEMM workspace the runtime grants a solution; a candidate needing more is rejected."""


def spec_hash(spec: str) -> int:
    """Stable 31-bit hash of a spec string (the CSV ``solidx`` of non-ROCm backends)."""
    return zlib.crc32(spec.encode()) & 0x7FFFFFFF


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``'libtype:k=v,k=v'`` into its libtype and fields; raise ValueError if malformed."""
    libtype, sep, rest = spec.partition(":")
    if not libtype or (not sep and spec != libtype):
        raise ValueError(f"malformed solution spec {spec!r}")
    fields: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"malformed field {item!r} in solution spec {spec!r}")
        fields[key.strip()] = value.strip()
    return libtype.strip(), fields


def format_spec(libtype: str, fields: dict[str, object]) -> str:
    return libtype + ":" + ",".join(f"{k}={v}" for k, v in fields.items())


class Solution(ABC):
    """One runnable configuration of one backend for one problem."""

    libtype: str
    problem: GemmProblem

    @property
    @abstractmethod
    def spec(self) -> str: ...

    @property
    def solidx(self) -> int:
        return spec_hash(self.spec)

    def accepts(self, n: int) -> bool:
        """Whether this solution may run with ``n`` tokens instead of ``problem.N``."""
        return n == self.problem.N

    @abstractmethod
    def run(self, ops: GemmOperands) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


class Backend(ABC):
    """A source of solutions (one per libtype)."""

    libtype: str

    @abstractmethod
    def available(self) -> tuple[bool, str]: ...

    @abstractmethod
    def solutions(self, problem: GemmProblem) -> list[Solution]: ...

    @abstractmethod
    def from_spec(self, spec: str, problem: GemmProblem) -> Solution: ...

    def version(self) -> str:
        """The library build the solutions belong to (written as ``lib_version``)."""
        import torch

        return f"torch-{torch.__version__}"
