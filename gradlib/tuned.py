"""The tuned solutions a process runs with: rows of a tuned file that match this device and
library build, each solution built once at load.

Lookup for a call with ``n`` tokens: the exact row; else the row of the same weight (M, K, bias,
dtypes) with the smallest tuned N ≥ n whose solution accepts n; else ``default``. Decisions are
cached per problem, so a call costs one dict lookup. Generation never fails because of a tuned
file: a row whose solution cannot be built is dropped with a warning naming it.
"""
from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from solidx.gradlib.backends import get_backend, solution_from_spec
from solidx.gradlib.backends.base import Solution
from solidx.gradlib.backends.default import DefaultSolution
from solidx.gradlib.device import device_identity
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
    """Per-weight tuned solutions sorted by N, and how many calls ran a tuned solution and how
    many the default (``hits["tuned"]``, ``hits["default"]``)."""

    by_weight: dict[tuple, list[tuple[int, Solution]]] = field(default_factory=dict)
    summary: str = "no tuned file"
    hits: Counter = field(default_factory=Counter)
    _cache: dict[GemmProblem, Solution] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str, device: torch.device | str) -> TunedGemms:
        """Load the rows of ``path`` that apply to ``device``; raises CsvError for a malformed
        file."""
        identity = device_identity(device)
        selection = select_rows(read_tuned(path), identity.name, identity.sm_count, library_version)
        tuned = cls()
        built = []
        for row in selection.rows:
            solution = _build(row)
            if solution is None:
                selection.skipped["unbuildable (see warnings)"] += 1
                continue
            built.append(row)
            entries = tuned.by_weight.setdefault(_weight_key(row.problem), [])
            bisect.insort(entries, (row.problem.N, solution), key=lambda e: e[0])
        selection.rows = built
        tuned.summary = f"{path}: {selection.summary()}"
        if built:
            logger.info("tuned GEMMs: %s", tuned.summary)
        else:  # every row is for another device or build: the file does nothing here
            logger.warning("tuned GEMMs: %s: the file contributes no row", tuned.summary)
        return tuned

    def solution(self, problem: GemmProblem) -> Solution:
        """The solution to run ``problem`` with (see the module docstring for the rule)."""
        cached = self._cache.get(problem)
        if cached is None:
            cached = self._cache[problem] = self._choose(problem)
        self.hits["tuned" if cached.libtype != "default" else "default"] += 1
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
