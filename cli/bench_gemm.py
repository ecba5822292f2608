"""``solidx bench gemm``: default vs tuned vs the hardware's floor, for every tuned problem."""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from solidx.cli.csv_cmd import table
from solidx.gradlib.bench_gemm import BenchReport, BenchResult, bench_gemm
from solidx.gradlib.dtypes import parse_dtype
from solidx.gradlib.schema import CsvError
from solidx.gradlib.timing import TimingConfig

NAN = math.nan

HEADER = ["M", "N", "K", "dtype", "libtype", "default_us", "tuned_us", "speedup", "tunableop_us",
          "floor_us", "x_floor", "%copy_bw", "TFLOP/s", "%peak", "note"]
_SHORT = {"float8_e4m3fn": "fp8", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _num(value: float, fmt: str) -> str:
    return "" if value is None or math.isnan(value) else format(value, fmt)


def _us(ms: float) -> str:
    return _num(ms * 1e3, ".2f")


def _short(dtype: str) -> str:
    name = dtype.removeprefix("torch.")
    return _SHORT.get(name, name)


def _line(r: BenchResult) -> list[str]:
    dtypes = f"{_short(r.dtype)}->{_short(r.outdtype)}" + ("+bias" if r.bias else "")
    return [str(r.M), str(r.N), str(r.K), dtypes, r.libtype, _us(r.default_ms), _us(r.tuned_ms),
            _num(r.speedup, ".3f"), _us(r.tunableop_ms), _us(r.floor_ms),
            _num(r.floor_multiple, ".2f"), _num(r.pct_copy_bw, ".0f"), _num(r.tflops, ".1f"),
            _num(r.pct_peak, ".0f"), r.note]


def render(report: BenchReport) -> str:
    """The report as a header, a table with one line per problem, and the geometric mean."""
    peaks = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in report.peak_tflops.items())
    return "\n".join([
        f"{report.device} ({report.sm_count} SMs), torch {report.torch_version}, "
        f"{report.measured_at}; timing: {report.timing_mode}",
        f"copy {report.copy_gbps:.0f} GB/s (read+write); "
        f"{report.peak_size}^3 matmul peak: {peaks or 'not measured'}",
        f"tuned rows: {report.selection}",
        table(HEADER, [_line(r) for r in report.results]),
        f"geometric-mean speedup over default: {report.geomean_speedup:.3f}x "
        f"over {len(report.results)} problems",
        *_floor_lines(report.results),
    ])


def _floor_lines(results: list[BenchResult]) -> list[str]:
    """Per operand dtype: how many problems run within 1.10x / 1.15x of the read floor, the
    worst multiple, the geometric-mean speedup and how many fell below 0.98x of default."""
    lines = []
    for dtype in dict.fromkeys(r.dtype for r in results):
        rows = [r for r in results if r.dtype == dtype]
        floors = [r.floor_multiple for r in rows if not math.isnan(r.floor_multiple)]
        speedups = [r.speedup for r in rows if r.speedup > 0]
        geomean = math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else NAN
        line = (f"{_short(dtype)}: {len(rows)} problems, geomean speedup {geomean:.3f}x, "
                f"{sum(s < 0.98 for s in speedups)} below 0.98x")
        if floors:
            line += (f"; of the floor: {sum(f <= 1.10 for f in floors)} within 1.10x, "
                     f"{sum(f <= 1.15 for f in floors)} within 1.15x, worst {max(floors):.2f}x")
        lines.append(line)
    return lines


@click.command("gemm")
@click.option("--tuned-file", "--tuned_file", "tuned_file", required=True,
              type=click.Path(dir_okay=False),
              help="Tuned file whose rows for this device are re-timed.")
@click.option("--input-file", "--input_file", "input_file", default=None,
              type=click.Path(dir_okay=False),
              help="Shapes file: bench these problems (untuned ones run the default).")
@click.option("--output-json", default=None, type=click.Path(dir_okay=False),
              help="Save the results as JSON.")
@click.option("--gpu", type=click.IntRange(min=0), default=None, help="GPU index [current device].")
@click.option("--rounds", type=click.IntRange(min=1), default=15, show_default=True,
              help="Interleaved samples per timed solution.")
@click.option("--indtype", default="fp8", show_default=True,
              help="Operand dtype for files without one.")
@click.option("--outdtype", default="bf16", show_default=True,
              help="Output dtype for files without one.")
def gemm(tuned_file: str, input_file: str | None, output_json: str | None, gpu: int | None,
         rounds: int, indtype: str, outdtype: str) -> None:
    """Re-time default vs tuned (and TunableOp, and the read floor) in one run on one card."""

    def progress(r: BenchResult) -> None:
        click.echo(f"  M={r.M} N={r.N} K={r.K}: {r.speedup:.3f}x", err=True)

    try:
        report = bench_gemm(tuned_file, input_file, gpu=gpu,
                            config=TimingConfig(final_rounds=rounds), dtype=parse_dtype(indtype),
                            outdtype=parse_dtype(outdtype), progress=progress)
    except (CsvError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(report))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        click.echo(f"saved {output_json}")
