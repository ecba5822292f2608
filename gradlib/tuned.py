"""The tuned solutions a process runs with: rows of tuned files that match this device and
library build, each solution built once at load.

Lookup for a call with ``n`` tokens: the exact row; else the row of the same weight (M, K, bias,
dtypes) with the smallest tuned N ≥ n whose solution accepts n; else ``default``. fp8 and 16-bit
rows live side by side (the dtypes are part of the weight's key). Decisions are cached per
problem, and each (layer kind, problem) decision is noted once: hits (a tuned solution) and
misses (the default) are counts of distinct problems, never of calls. Generation never fails
because of a tuned file: a row whose solution cannot be built is dropped with a warning.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from solidx.gradlib.backends import get_backend, solution_from_spec
from solidx.gradlib.backends.base import Solution
from solidx.gradlib.backends.default import DefaultSolution
from solidx.gradlib.device import device_identity
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow, read_tuned, select_rows

logger = logging.getLogger(__name__)


def _weight_key(problem: GemmProblem) -> tuple:
    return (problem.M, problem.K, problem.bias, problem.dtype, problem.outdtype)


def library_version(libtype: str) -> str | None:
    """The running build of a backend, or None where it is unavailable here."""
    try:
        backend = get_backend(libtype)
    except ValueError:
        return None
    ok, _ = backend.available()
    return backend.version() if ok else None


@dataclass
class TunedGemms:
    """Per-weight tuned solutions sorted by N, and the decision taken for every (layer kind,
    problem) looked up (``decisions``: kind -> problem -> spec of the solution it runs)."""

    by_weight: dict[tuple, list[tuple[int, Solution]]] = field(default_factory=dict)
    summary: str = "no tuned file"
    decisions: dict[str, dict[GemmProblem, str]] = field(default_factory=dict)
    _cache: dict[GemmProblem, Solution] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: str | list[str], device: torch.device | str) -> TunedGemms:
        """Load the rows of ``paths`` (one file or several, later files win per problem) that
        apply to ``device``; raises CsvError for a malformed file."""
        identity = device_identity(device)
        tuned = cls()
        summaries = []
        for path in [paths] if isinstance(paths, str) else paths:
            selection = select_rows(read_tuned(path), identity.name, identity.sm_count,
                                    library_version)
            built = []
            for row in selection.rows:
                solution = _build(row)
                if solution is None:
                    selection.skipped["unbuildable (see warnings)"] += 1
                    continue
                built.append(row)
                tuned._add(row.problem, solution)
            selection.rows = built
            summaries.append(f"{path}: {selection.summary()}")
        tuned.summary = "; ".join(summaries) or tuned.summary
        if tuned.rows:
            logger.info("tuned GEMMs: %s", tuned.summary)
        else:  # every row is for another device or build: the file does nothing here
            logger.warning("tuned GEMMs: %s: the file contributes no row", tuned.summary)
        return tuned

    def _add(self, problem: GemmProblem, solution: Solution) -> None:
        entries = self.by_weight.setdefault(_weight_key(problem), [])
        entries[:] = [e for e in entries if e[0] != problem.N]
        bisect.insort(entries, (problem.N, solution), key=lambda e: e[0])

    def solution(self, problem: GemmProblem, kind: str = "") -> Solution:
        """The solution to run ``problem`` with (see the module docstring for the rule); the
        decision is noted under the layer kind ``kind`` (``qkv``, ``lm_head``, ...)."""
        cached = self._cache.get(problem)
        if cached is None:
            cached = self._cache[problem] = self._choose(problem)
        self.decisions.setdefault(kind, {}).setdefault(problem, cached.spec)
        return cached

    def _choose(self, problem: GemmProblem) -> Solution:
        entries = self.by_weight.get(_weight_key(problem), [])
        start = bisect.bisect_left(entries, problem.N, key=lambda e: e[0])
        for tuned_n, solution in entries[start:]:
            if tuned_n == problem.N or solution.accepts(problem.N):
                return solution
        return DefaultSolution(problem)

    @property
    def rows(self) -> int:
        return sum(len(v) for v in self.by_weight.values())

    def hits(self) -> dict[str, dict[str, int]]:
        """Per layer kind, how many distinct problems ran a tuned solution (``hits``) and how
        many the default (``misses``)."""
        out = {}
        for kind, problems in sorted(self.decisions.items()):
            tuned = sum(1 for spec in problems.values() if not spec.startswith("default:"))
            out[kind] = {"hits": tuned, "misses": len(problems) - tuned}
        return out

    def report(self) -> dict[str, Any]:
        """The file's summary, and hits and misses in all and by layer kind."""
        by_kind = self.hits()
        return {
            "tuned_file": self.summary,
            "problems_tuned": sum(v["hits"] for v in by_kind.values()),
            "problems_default": sum(v["misses"] for v in by_kind.values()),
            "by_kind": by_kind,
        }

    def warm_up(self, device: torch.device | str) -> int:
        """Run every tuned solution once on operands of its own problem on ``device``,
        so that libraries are initialised and kernels compiled before a CUDA graph captures
        them; returns how many ran. A solution that fails here is dropped with a warning."""
        ran = 0
        for key, entries in self.by_weight.items():
            kept = []
            for n, solution in entries:
                if solution.libtype == "default" and not solution.problem.is_fp8:
                    kept.append((n, solution))  # F.linear: warmed by the eager forward
                    continue
                try:
                    solution.run(_zero_operands(solution.problem, torch.device(device)))
                except Exception as exc:  # a broken row must never stop generation
                    logger.warning("tuned row %s: %s failed its warm-up (%s): dropped",
                                   solution.problem, solution.spec, exc)
                    continue
                kept.append((n, solution))
                ran += 1
            entries[:] = kept
        self._cache.clear()
        return ran


def _zero_operands(problem: GemmProblem, device: torch.device) -> GemmOperands:
    """Operands of ``problem`` filled with zeros (a warm-up needs shapes, not values)."""
    x = torch.zeros(problem.N, problem.K, dtype=problem.dtype, device=device)
    w = torch.zeros(problem.M, problem.K, dtype=problem.dtype, device=device)
    scale = torch.ones((), dtype=torch.float32, device=device) if problem.is_fp8 else None
    bias = torch.zeros(problem.M, dtype=problem.outdtype, device=device) if problem.bias else None
    return GemmOperands(x, w, scale, scale, bias)


def _build(row: TunedRow) -> Solution | None:
    if row.libtype == "default":
        return DefaultSolution(row.problem)
    if not row.solution:
        logger.warning("tuned row %s (%s) has no solution spec: dropped", row.problem, row.libtype)
        return None
    try:
        return solution_from_spec(row.solution, row.problem)
    except Exception as exc:  # a broken row must never stop generation
        logger.warning("tuned row %s: solution %r cannot be built (%s): dropped", row.problem,
                       row.solution, exc)
        return None
