"""What a tuning run did: one :class:`ShapeResult` per problem, gathered in a :class:`TuneReport`
with its table and summary lines."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from solidx.gradlib.dtypes import dtype_name
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow


@dataclass
class ShapeResult:
    """How one problem went: its row (None when the problem failed), candidates tried and
    rejected, and the failure if any."""

    problem: GemmProblem
    row: TunedRow | None = None
    tried: int = 0
    rejected: int = 0
    spread: float = math.nan
    error: str = ""
    worker: str = ""
    seconds: float = 0.0


@dataclass
class TuneReport:
    results: list[ShapeResult] = field(default_factory=list)
    skipped: list[GemmProblem] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def rows(self) -> list[TunedRow]:
        return [r.row for r in self.results if r.row is not None]

    @property
    def failed(self) -> list[ShapeResult]:
        return [r for r in self.results if r.row is None]

    def frame(self) -> pd.DataFrame:
        """One line per problem tuned in this run."""
        records = []
        for r in self.results:
            p, row = r.problem, r.row
            records.append({
                "M": p.M, "N": p.N, "K": p.K, "bias": p.bias,
                "dtype": dtype_name(p.dtype).removeprefix("torch."),
                "outdtype": dtype_name(p.outdtype).removeprefix("torch."),
                "libtype": row.libtype if row else "FAILED",
                "ms": row.soltimems if row else math.nan,
                "default_ms": row.default_ms if row else math.nan,
                "speedup": row.speedup if row else math.nan,
                "TFLOP/s": row.tflops if row else math.nan,
                "GB/s": row.gbps if row else math.nan,
                "spread": r.spread,
                "tried": r.tried, "rejected": r.rejected, "on": r.worker, "s": r.seconds,
                "note": r.error,
            })
        return pd.DataFrame.from_records(records)

    def summary(self) -> str:
        """The per-problem table and a few closing lines."""
        lines = []
        if self.results:
            lines.append(self.frame().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        rows = self.rows
        wins: dict[str, int] = {}
        for row in rows:
            wins[row.libtype] = wins.get(row.libtype, 0) + 1
        speedups = [r.speedup for r in rows if r.speedup > 0]
        geomean = math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else math.nan
        won = ", ".join(f"{n} {lib}" for lib, n in sorted(wins.items())) or "none"
        lines.append(
            f"{len(rows)} problems tuned ({won}), {len(self.skipped)} skipped as already tuned, "
            f"{len(self.failed)} failed; geometric-mean speedup {geomean:.3f}x; "
            f"{self.elapsed_s:.1f} s"
        )
        for libtype, reason in sorted(self.unavailable.items()):
            lines.append(f"backend {libtype} skipped: {reason}")
        return "\n".join(lines)
