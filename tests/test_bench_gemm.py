"""``bench gemm`` on CPU (default and Triton rows, JSON, table) and ``csv plot``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from solidx.gradlib.backends import get_backend
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.bench_gemm import bench_gemm
from solidx.gradlib.device import device_identity
from solidx.gradlib.operands import tolerance
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow, write_shapes
from solidx.gradlib.tuned_file import TunedRow, write_tuned
from solidx.gradlib.timing import TimingConfig

CPU = device_identity("cpu").name
FAST = TimingConfig(target_ms=1.0, min_launches=1, max_launches=2, warmup=1, final_rounds=3)


def row(problem: GemmProblem, spec: str, device: str = CPU, speedup: float = 1.0) -> TunedRow:
    libtype = spec.partition(":")[0]
    version = get_backend(libtype).version() if device == CPU else "other"
    return TunedRow(problem, libtype, spec_hash(spec), 0.01, spec, default_ms=0.01 * speedup,
                    speedup=speedup, device=device, sm_count=0, lib_version=version)


def test_bench_retimes_rows_of_this_device(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.csv"
    fp8 = GemmProblem(32, 2, 64)
    half = GemmProblem(16, 3, 32, bias=True, dtype=torch.float16, outdtype=torch.float16)
    triton_spec = get_backend("triton").solutions(fp8)[0].spec
    write_tuned(tuned, [row(fp8, triton_spec), row(half, "default:"),
                        row(GemmProblem(64, 1, 64), "default:", device="NVIDIA H200")])
    report = bench_gemm(tuned, config=FAST, measure_peaks=False)
    assert report.device == CPU and "1 skipped" in report.selection
    by_n = {r.N: r for r in report.results}
    assert set(by_n) == {2, 3}
    assert by_n[2].libtype == "triton" and by_n[2].solution == triton_spec
    assert by_n[2].max_rel_err <= tolerance(fp8)
    assert by_n[3].libtype == "default" and by_n[3].tuned_ms == by_n[3].default_ms
    for r in report.results:
        assert r.default_ms > 0 and r.tuned_ms > 0
        assert r.speedup == pytest.approx(r.default_ms / r.tuned_ms)
        assert r.gbps > 0 and 0 < r.pct_copy_bw and math.isnan(r.floor_ms)  # no floor on CPU


def test_bench_cli_with_shapes_file_writes_json(tmp_path: Path) -> None:
    from solidx.cli.bench_gemm import gemm

    tuned, shapes, out = tmp_path / "tuned.csv", tmp_path / "shapes.csv", tmp_path / "bench.json"
    tuned_problem, untuned = GemmProblem(32, 1, 32), GemmProblem(48, 4, 32)
    write_tuned(tuned, [row(tuned_problem, "default:")])
    write_shapes(shapes, [ShapeRow(tuned_problem), ShapeRow(untuned)])
    result = CliRunner().invoke(gemm, ["--tuned-file", str(tuned), "--input-file", str(shapes),
                                       "--output-json", str(out), "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "geometric-mean speedup" in result.output and "untuned" in result.output
    data = json.loads(out.read_text())
    assert data["device"] == CPU and data["copy_gbps"] > 0 and data["peak_tflops"]["bf16"] > 0
    assert [(r["M"], r["libtype"]) for r in data["results"]] == [(32, "default"), (48, "untuned")]
    assert data["results"][0]["floor_ms"] is None  # NaN written as null


def test_csv_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from solidx.cli.csv_plot import plot

    tuned, png = tmp_path / "tuned.csv", tmp_path / "speedup.png"
    grid = [(m, dev, n, s) for m, dev in ((32, CPU), (64, "NVIDIA H200"))
            for n, s in ((1, 1.2), (16, 1.0), (512, 0.97))]
    rows = [row(GemmProblem(m, n, 64), "default:", device=dev, speedup=s) for m, dev, n, s in grid]
    write_tuned(tuned, rows)
    result = CliRunner().invoke(plot, [str(tuned), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = tmp_path / "empty.csv"
    write_tuned(empty, [])
    assert CliRunner().invoke(plot, [str(empty), "-o", str(png)]).exit_code != 0
