"""``bench gemm``'s per-dtype summary: floor multiples and speedups counted as documented."""
from __future__ import annotations

import math

from solidx.cli.bench_gemm import _floor_lines
from solidx.gradlib.bench_gemm import BenchResult


def result(dtype: str, speedup: float, floor_multiple: float) -> BenchResult:
    return BenchResult(4096, 1, 4096, False, dtype, "torch.bfloat16", "triton", "triton:x",
                       default_ms=speedup, tuned_ms=1.0, speedup=speedup, tuned_spread=0.0,
                       floor_ms=1.0, floor_multiple=floor_multiple)


def test_floor_lines_count_per_dtype() -> None:
    lines = _floor_lines([result("torch.float8_e4m3fn", 1.2, 1.05),
                          result("torch.float8_e4m3fn", 0.97, 1.12),
                          result("torch.bfloat16", 1.0, 1.3),
                          result("torch.bfloat16", 1.0, math.nan)])
    assert lines[0] == ("fp8: 2 problems, geomean speedup 1.079x, 1 below 0.98x; of the floor: "
                        "1 within 1.10x, 2 within 1.15x, worst 1.12x")
    assert lines[1] == ("bf16: 2 problems, geomean speedup 1.000x, 0 below 0.98x; of the floor: "
                        "0 within 1.10x, 0 within 1.15x, worst 1.30x")
