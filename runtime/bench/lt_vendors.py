"""Benchmark of the Lt calls cuBLASLt and hipBLASLt share (:mod:`solidx.gradlib.backends.lt_plan`)
with this GPU's vendor table: for each problem, how many heuristic results the library returns,
the worst error of any of them against the fp32 reference, and the first pick's time beside the
``default`` solution's.

``python -m solidx.runtime.bench.lt_vendors [--output-json PATH]`` (needs a CUDA or ROCm GPU);
prints a table last.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from solidx.gradlib.backends import cublaslt_api, hipblaslt
from solidx.gradlib.backends.default import DefaultSolution
from solidx.gradlib.backends.lt_plan import LtPlan
from solidx.gradlib.backends.lt_vendor import CUBLASLT, HIPBLASLT, LtVendor
from solidx.gradlib.device import device_fp8_dtype
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.timing import time_calls

WEIGHTS = ((4096, 4096), (28672, 4096))
TOKENS = (1, 16, 128)
HEURISTIC_COUNT = 32


def vendor() -> tuple[LtVendor, object]:
    """This GPU's Lt vendor table and loaded library; RuntimeError where there is none."""
    if torch.version.hip:
        lib, why = hipblaslt.load()
        if lib is None:
            raise RuntimeError(why)
        return HIPBLASLT, lib
    return CUBLASLT, cublaslt_api.library()


def problems(fp8: torch.dtype) -> list[GemmProblem]:
    found = [GemmProblem(m, n, k, dtype=fp8, outdtype=torch.bfloat16)
             for m, k in WEIGHTS for n in TOKENS]
    found += [GemmProblem(4096, 16, 4096, bias=True, dtype=fp8, outdtype=torch.bfloat16),
              GemmProblem(4096, 16, 4096, dtype=torch.bfloat16, outdtype=torch.bfloat16)]
    return found


def bench(problem: GemmProblem, table: LtVendor, lib: object, device: torch.device) -> dict:
    """One problem's row: heuristic count, worst error / tolerance, first pick and default ms."""
    plan = LtPlan(table, lib, problem, device)
    results = plan.heuristic(problem.N, HEURISTIC_COUNT)
    ops = make_operands(problem, device, torch.Generator().manual_seed(0))
    ref = reference_gemm(problem, ops)
    row = {"problem": str(problem), "vendor": table.name, "heuristic": len(results)}
    if not results:
        return row
    row["worst_err_over_tol"] = max(
        max_rel_err(plan.matmul(r.algo, ops, r.workspaceSize), ref) for r in results
    ) / tolerance(problem)
    first = results[0]
    row["first_ms"] = time_calls(
        lambda: plan.matmul(first.algo, ops, first.workspaceSize), device, calls=20).median_ms
    default = DefaultSolution(problem)
    row["default_ms"] = time_calls(lambda: default.run(ops), device, calls=20).median_ms
    return row


def format_table(rows: list[dict]) -> str:
    lines = [f"{'problem':68} {'vendor':9} {'picks':>5} {'err/tol':>8} {'first ms':>9} "
             f"{'default ms':>10}"]
    for r in rows:
        lines.append(f"{r['problem']:68} {r['vendor']:9} {r['heuristic']:>5} "
                     f"{r.get('worst_err_over_tol', float('nan')):>8.3f} "
                     f"{r.get('first_ms', float('nan')):>9.4f} "
                     f"{r.get('default_ms', float('nan')):>10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("lt_vendors: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    table, lib = vendor()
    device = torch.device("cuda", torch.cuda.current_device())
    rows = [bench(p, table, lib, device) for p in problems(device_fp8_dtype(device))]
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)
    print(format_table(rows))
    bad = [r["problem"] for r in rows if not r["heuristic"] or r["worst_err_over_tol"] > 1]
    if bad:
        print(f"lt_vendors: no picks or picks beyond tolerance for {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
