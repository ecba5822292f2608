"""``solidx bench``: benchmarks that print and save figures (gemm, attention, latency,
throughput), each imported when it runs."""
from __future__ import annotations

import click

from solidx.cli.lazy_group import LazyGroup

BENCHMARKS = {
    "gemm": ("solidx.cli.bench_gemm:gemm",
             "Re-time default vs tuned (and TunableOp, and the read floor) on one card."),
    "attention": ("solidx.cli.bench_attention:attention",
                  "Time prefill and paged decode attention kernels on the GPU."),
    "latency": ("solidx.cli.bench_latency:latency",
                "Time one batch of random prompts through the engine."),
    "throughput": ("solidx.cli.bench_throughput:throughput",
                   "A workload through the engine beside transformers."),
    "serve": ("solidx.cli.bench_serve:serve_bench",
              "Requests against a running solidx serve: throughput, TTFT, TPOT, ITL."),
}


@click.group(cls=LazyGroup, lazy=BENCHMARKS)
def bench() -> None:
    """Benchmarks that print and save figures (gemm, attention, latency, throughput, serve)."""
