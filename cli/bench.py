"""``solidx bench``: benchmarks (gemm, attention, latency, throughput)."""
from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks that print and save figures (gemm, attention, latency, throughput)."""
