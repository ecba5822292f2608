"""``solidx bench``: benchmarks that print and save figures (gemm, attention, latency)."""
from __future__ import annotations

import click

from solidx.cli.bench_attention import attention
from solidx.cli.bench_gemm import gemm
from solidx.cli.bench_latency import latency
from solidx.cli.bench_serve import serve_bench
from solidx.cli.bench_throughput import throughput


@click.group()
def bench() -> None:
    """Benchmarks that print and save figures (gemm, attention, latency, throughput, serve)."""


bench.add_command(gemm)
bench.add_command(attention)
bench.add_command(latency)
bench.add_command(throughput)
bench.add_command(serve_bench)
