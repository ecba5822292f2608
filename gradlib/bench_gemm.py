"""``bench gemm``: re-time a tuned file against the hardware, in one run on one card.

For every problem that applies to this device (the tuned rows :func:`gradlib.tuned_file.select_rows`
keeps, or the problems of a shapes file), timed in turns with CUDA-graph replay over rotating
operands (:mod:`solidx.gradlib.timing`):

* the default and the tuned solution, hence the speedup;
* for 16-bit problems, TunableOp's pick (``torch.cuda.tunable``) where torch has it;
* the *floor*: :func:`gradlib.kernels.read_floor.read_floor` over the same weight bytes (the
  fastest of its configurations), hence the tuned time as a multiple of the floor.

Also measured in the same run: a large device-to-device copy (GB/s counting bytes read and
written) and the TFLOP/s of a 8192³ bf16 matmul and fp8 ``_scaled_mm`` (random data), against
which each problem's GB/s and TFLOP/s are reported as percentages.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from solidx.gradlib.backends import LIBTYPES, get_backend, solution_from_spec
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8, dtype_name
from solidx.gradlib.kernels.read_floor import FLOOR_CONFIGS, floor_output, read_floor
from solidx.gradlib.operands import GemmOperands, make_operands, max_rel_err, reference_gemm
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow, read_tuned, select_rows
from solidx.gradlib.timing import (
    Timer,
    TimingConfig,
    calibrate,
    copy_bandwidth,
    interleave,
    make_timer,
    measure,
    rotating_copies,
    time_calls,
)
from solidx.gradlib.tuner import load_problems
from solidx.gradlib.worker_child import problem_seed
from solidx.gradlib.worker_messages import DEFAULT_SPEC

PEAK_SIZE = 8192
CPU_PEAK_SIZE = 256
NAN = math.nan


@dataclass
class BenchResult:
    """One problem's times (ms per call) and what they mean against the hardware."""

    M: int
    N: int
    K: int
    bias: bool
    dtype: str
    outdtype: str
    libtype: str
    solution: str
    default_ms: float
    tuned_ms: float
    speedup: float
    tuned_spread: float
    max_rel_err: float = NAN
    tunableop_ms: float = NAN
    floor_ms: float = NAN
    floor_multiple: float = NAN
    tflops: float = NAN
    gbps: float = NAN
    pct_copy_bw: float = NAN
    pct_peak: float = NAN
    note: str = ""


@dataclass
class BenchReport:
    """One run on one card: the hardware's limits measured in it (copy GB/s, matmul peaks), which
    tuned rows applied (``selection``) and one :class:`BenchResult` per problem."""

    device: str
    sm_count: int
    torch_version: str
    timing_mode: str
    copy_gbps: float
    peak_tflops: dict[str, float]
    peak_size: int
    selection: str
    results: list[BenchResult] = field(default_factory=list)
    measured_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def geomean_speedup(self) -> float:
        """Geometric mean of the problems' speedups over the default (NaN for none)."""
        values = [r.speedup for r in self.results if r.speedup > 0]
        return math.exp(sum(map(math.log, values)) / len(values)) if values else NAN

    def to_json(self) -> dict[str, Any]:
        """Every field and the geometric mean, NaN and infinities as ``None``."""
        data = asdict(self)
        data["geomean_speedup"] = self.geomean_speedup
        return _finite(data)


def _finite(value: Any) -> Any:
    """NaN/inf become null so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------- the hardware's limits


def matmul_peaks(device: torch.device) -> tuple[dict[str, float], int]:
    """TFLOP/s of an n³ bf16 matmul and (on CUDA) fp8 ``_scaled_mm`` on random data;
    n is 8192 on CUDA, 256 on CPU."""
    n = PEAK_SIZE if device.type == "cuda" else CPU_PEAK_SIZE
    flops = 2 * n**3
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    peaks = {"bf16": flops / (time_calls(lambda: a @ b, device).median_ms * 1e-3) / 1e12}
    if device.type == "cuda":
        a8, b8 = a.to(FP8), b.to(FP8)
        one = torch.ones((), device=device)
        try:
            ms = time_calls(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one,
                                                     out_dtype=torch.bfloat16), device).median_ms
            peaks["fp8"] = flops / (ms * 1e-3) / 1e12
        except RuntimeError:  # fp8 matmul unsupported on this card
            pass
    return peaks, n


# ---------------------------------------------------------------- timers


def _floor_runs(device: torch.device) -> list[Callable[[GemmOperands], torch.Tensor]]:
    """One run per read-floor configuration, each reading the weight of its operands."""

    def floor_run(cfg: dict[str, int]) -> Callable[[GemmOperands], torch.Tensor]:
        out = floor_output(device, cfg["programs_per_sm"])
        return lambda ops: read_floor(ops.w, out, block=cfg["block"], num_warps=cfg["num_warps"])

    return [floor_run(cfg) for cfg in FLOOR_CONFIGS]


class _FloorCache:
    """The fastest read-floor configuration per weight size (searched once per size)."""

    def __init__(self, config: TimingConfig) -> None:
        self.config = config
        self.best: dict[int, int] = {}

    def timer(self, copies: list[GemmOperands], launches: int) -> Timer:
        runs = _floor_runs(copies[0].w.device)
        nbytes = copies[0].w.numel() * copies[0].w.element_size()
        if nbytes not in self.best:
            medians = []
            for run in runs:
                timer = make_timer(run, copies, launches, self.config)
                medians.append(measure(timer, 3).median_ms)
                timer.close()
            self.best[nbytes] = min(range(len(runs)), key=medians.__getitem__)
        return make_timer(runs[self.best[nbytes]], copies, launches, self.config)


def _tunableop_timer(copies: list[GemmOperands], launches: int, config: TimingConfig) -> Timer:
    """F.linear with TunableOp's pick: tuned afresh for this shape (its results file goes to a
    temporary folder, not the working directory), then captured with tuning off. The previous
    TunableOp state is restored."""
    tunable = torch.cuda.tunable
    was_enabled, was_tuning = tunable.is_enabled(), tunable.tuning_is_enabled()
    if not tunable.get_filename().startswith(tempfile.gettempdir()):
        folder = Path(tempfile.mkdtemp(prefix="solidx-tunableop-"))
        tunable.set_filename(str(folder / "results.csv"))

    def run(ops: GemmOperands) -> torch.Tensor:
        return F.linear(ops.x, ops.w, ops.bias)

    try:
        tunable.enable(True)
        tunable.tuning_enable(True)
        run(copies[0])
        torch.cuda.synchronize()
        tunable.tuning_enable(False)
        return make_timer(run, copies, launches, config)
    finally:
        tunable.tuning_enable(was_tuning)
        tunable.enable(was_enabled)


# ---------------------------------------------------------------- one problem


def _bench_one(problem: GemmProblem, row: TunedRow | None, device: torch.device,
               config: TimingConfig, floors: _FloorCache | None, copy_gbps: float,
               peaks: dict[str, float]) -> BenchResult:
    generator = torch.Generator().manual_seed(problem_seed(problem))
    ops = make_operands(problem, device, generator)
    copies = rotating_copies(ops, config)
    default = get_backend("default").from_spec(DEFAULT_SPEC, problem)
    spec = row.solution if row is not None and row.solution else DEFAULT_SPEC
    libtype = row.libtype if row is not None else "untuned"
    notes = []
    try:
        tuned = solution_from_spec(spec, problem) if spec != DEFAULT_SPEC else default
    except Exception as exc:  # a row this build cannot rebuild: timed as default, and said so
        notes.append(f"tuned solution unusable: {type(exc).__name__}: {exc}")
        tuned, libtype = default, "error"
    err = max_rel_err(tuned.run(ops), reference_gemm(problem, ops))
    launches = calibrate(default.run, copies, config)
    names, timers = ["default"], [make_timer(default.run, copies, launches, config)]
    try:
        if tuned is not default:
            names.append("tuned")
            timers.append(make_timer(tuned.run, copies, launches, config))
        if device.type == "cuda" and not problem.is_fp8 and hasattr(torch.cuda, "tunable"):
            try:
                timers.append(_tunableop_timer(copies, launches, config))
                names.append("tunableop")
            except Exception as exc:  # TunableOp absent or refusing: reported, not fatal
                notes.append(f"tunableop: {type(exc).__name__}")
        if floors is not None:
            try:
                timers.append(floors.timer(copies, launches))
                names.append("floor")
            except Exception as exc:
                notes.append(f"floor: {type(exc).__name__}: {exc}")
        timings = dict(zip(names, interleave(timers, config.final_rounds)))
    finally:
        for timer in timers:
            timer.close()
    default_ms = timings["default"].median_ms
    tuned_t = timings.get("tuned", timings["default"])
    seconds = tuned_t.median_ms * 1e-3
    tflops = problem.flops / seconds / 1e12
    gbps = problem.min_bytes / seconds / 1e9
    floor_ms = timings["floor"].median_ms if "floor" in timings else NAN
    peak = peaks.get("fp8" if problem.is_fp8 else "bf16", NAN)
    return BenchResult(
        M=problem.M, N=problem.N, K=problem.K, bias=problem.bias,
        dtype=dtype_name(problem.dtype), outdtype=dtype_name(problem.outdtype),
        libtype=libtype, solution=spec, default_ms=default_ms, tuned_ms=tuned_t.median_ms,
        speedup=default_ms / tuned_t.median_ms, tuned_spread=tuned_t.spread, max_rel_err=err,
        tunableop_ms=timings["tunableop"].median_ms if "tunableop" in timings else NAN,
        floor_ms=floor_ms, floor_multiple=tuned_t.median_ms / floor_ms, tflops=tflops, gbps=gbps,
        pct_copy_bw=100 * gbps / copy_gbps, pct_peak=100 * tflops / peak, note="; ".join(notes),
    )


def _lib_versions() -> Callable[[str], str | None]:
    versions: dict[str, str | None] = {}
    for libtype in LIBTYPES:
        try:
            backend = get_backend(libtype)
            versions[libtype] = backend.version() if backend.available()[0] else None
        except Exception:
            versions[libtype] = None
    return versions.get


def bench_gemm(
    tuned_file: str | Path, input_file: str | Path | None = None, *, gpu: int | None = None,
    config: TimingConfig = TimingConfig(), measure_peaks: bool = True,
    dtype: torch.dtype = FP8, outdtype: torch.dtype = torch.bfloat16,
    progress: Callable[[BenchResult], None] | None = None,
) -> BenchReport:
    """Re-time the rows of ``tuned_file`` that apply to this device (or, with ``input_file``,
    every problem of that shapes file, tuned or not) on GPU ``gpu`` (CPU without CUDA)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device() if gpu is None else gpu)
        torch.cuda.set_device(device)
    else:
        if gpu is not None:
            raise ValueError(f"GPU {gpu} was asked for but torch sees no CUDA device")
        device = torch.device("cpu")
    name, sm_count = device_identity(device)
    rows = read_tuned(tuned_file, dtype, outdtype)
    selection = select_rows(rows, name, sm_count, _lib_versions())
    by_key = {row.problem.key(): row for row in selection.rows}
    if not selection.rows:
        raise ValueError(
            f"{tuned_file} has no row for this device ({name}, {sm_count} SMs) and library "
            f"build: {selection.summary()}; tune on this device first (solidx tune)"
        )
    if input_file is not None:
        problems = load_problems(input_file, dtype, outdtype)
    else:
        problems = list({row.problem.key(): row.problem for row in selection.rows}.values())
    copy_gbps = copy_bandwidth(device)
    peaks, peak_size = matmul_peaks(device) if measure_peaks else ({}, 0)
    report = BenchReport(
        device=name,
        sm_count=sm_count, torch_version=torch.__version__,
        timing_mode=config.resolved_mode(device), copy_gbps=copy_gbps, peak_tflops=peaks,
        peak_size=peak_size, selection=selection.summary(),
    )
    floors = _FloorCache(config) if device.type == "cuda" else None
    for problem in problems:
        row = by_key.get(problem.key())
        result = _bench_one(problem, row, device, config, floors, copy_gbps, peaks)
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report
